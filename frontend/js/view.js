// The viewport: which image pixel sits at the canvas's top-left corner and how many canvas pixels one image
// pixel covers. Both renderers and every pointer handler read positions through it.
export const MIN_SCALE = 1 / 16;
export const MAX_SCALE = 64;

export class Viewport {
  constructor(imageWidth, imageHeight) {
    this.imageWidth = imageWidth;
    this.imageHeight = imageHeight;
    this.canvasWidth = 1;
    this.canvasHeight = 1;
    this.scale = 1;
    this.x = 0; // image column at the canvas's left edge
    this.y = 0; // image row at the canvas's top edge
  }

  resize(canvasWidth, canvasHeight) {
    this.canvasWidth = Math.max(1, canvasWidth);
    this.canvasHeight = Math.max(1, canvasHeight);
  }

  fit() {
    this.scale = Math.min(this.canvasWidth / this.imageWidth, this.canvasHeight / this.imageHeight);
    this.x = (this.imageWidth - this.canvasWidth / this.scale) / 2;
    this.y = (this.imageHeight - this.canvasHeight / this.scale) / 2;
  }

  // canvas pixel -> fractional image coordinates [row, col]
  toImage(cx, cy) { return [this.y + cy / this.scale, this.x + cx / this.scale]; }

  toCanvas(row, col) { return [(col - this.x) * this.scale, (row - this.y) * this.scale]; }

  zoomAt(cx, cy, factor) {
    const [row, col] = this.toImage(cx, cy);
    this.scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, this.scale * factor));
    this.x = col - cx / this.scale;
    this.y = row - cy / this.scale;
  }

  panBy(dx, dy) {
    this.x -= dx / this.scale;
    this.y -= dy / this.scale;
  }

  centerOn(row, col) {
    this.x = col - this.canvasWidth / this.scale / 2;
    this.y = row - this.canvasHeight / this.scale / 2;
  }

  // the image rectangle in view, clipped to the image: [row0, col0, row1, col1], half-open
  visible() {
    const row0 = Math.max(0, Math.floor(this.y));
    const col0 = Math.max(0, Math.floor(this.x));
    const row1 = Math.min(this.imageHeight, Math.ceil(this.y + this.canvasHeight / this.scale));
    const col1 = Math.min(this.imageWidth, Math.ceil(this.x + this.canvasWidth / this.scale));
    return [row0, col0, Math.max(row0, row1), Math.max(col0, col1)];
  }
}
