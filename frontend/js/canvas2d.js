// The plain Canvas2D renderer: the same picture as the WebGL2 one (renderer.js), computed on the CPU for the
// pixels in view, then scaled up without smoothing. The editor falls back to it where WebGL2 is missing;
// bench/editor.py draws the same views with both to show what the GPU path buys.
import { BACKGROUND_RGB, OTHER_LAYER_RGB, OUTLINE_RGB, SELECTED_RGB, labelColor } from './palette.js';

export class Canvas2DRenderer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { willReadFrequently: false });
    this.scratch = document.createElement('canvas');
    this.colors = new Map();
  }

  get name() { return 'Canvas2D (CPU compositing)'; }

  setImage(planes, width, height) {
    this.planes = planes;
    this.width = width;
    this.height = height;
  }

  setLabels(labels) { this.labels = labels; }

  updateLabels() { /* reads the shown labels at every draw */ }

  // a big task in chunks: the planes are filled in place, and every draw reads them (no coarse level here)
  allocate(width, height) {
    this.width = width;
    this.height = height;
  }

  uploadImage(planes) { this.planes = planes; }

  loadLabels() { /* as updateLabels */ }

  expectChunks() { /* draws whatever has arrived */ }

  markLoaded() { /* as expectChunks */ }

  viewLoaded() { return true; } // no coarse level: what has arrived is drawn

  color(id) {
    let c = this.colors.get(id);
    if (!c) { c = labelColor(id); this.colors.set(id, c); }
    return c;
  }

  draw(view, display) {
    const { ctx, canvas } = this;
    const [r0, c0, r1, c1] = view.visible();
    const bg = BACKGROUND_RGB.map((v) => Math.round(v * 255));
    ctx.fillStyle = `rgb(${bg.join(',')})`;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const h = r1 - r0;
    const w = c1 - c0;
    if (h <= 0 || w <= 0) return;
    const out = new ImageData(w, h);
    const px = out.data;
    const lab = this.labels.shown;
    const W = this.width;
    const H = this.height;
    const layer = display.layer;
    const other = 1 - layer;
    const chans = display.channels.map((c) => ({ plane: this.planes[c.index], rgb: c.rgb, min: c.min, span: Math.max(c.max - c.min, 1e-12) }));
    const id = (row, col, l) => lab[((row < 0 ? 0 : row >= H ? H - 1 : row) * W + (col < 0 ? 0 : col >= W ? W - 1 : col)) * 2 + l];
    const edge = (row, col, l, v) => v !== 0 && (id(row, col + 1, l) !== v || id(row, col - 1, l) !== v
      || id(row + 1, col, l) !== v || id(row - 1, col, l) !== v);
    for (let row = r0; row < r1; row++) {
      for (let col = c0; col < c1; col++) {
        const i = row * W + col;
        let r = 0; let g = 0; let b = 0;
        for (const c of chans) {
          let t = (c.plane[i] - c.min) / c.span;
          t = t < 0 ? 0 : t > 1 ? 1 : t;
          r += t * c.rgb[0]; g += t * c.rgb[1]; b += t * c.rgb[2];
        }
        r = Math.min(r, 1); g = Math.min(g, 1); b = Math.min(b, 1);
        if (display.invert) { r = 1 - r; g = 1 - g; b = 1 - b; }
        const v = lab[i * 2 + layer];
        const selected = v !== 0 && v === display.selected && display.highlight;
        if (v !== 0) {
          const fill = selected ? Math.max(display.fill, 0.5) : display.fill;
          const lc = selected ? SELECTED_RGB : this.color(v);
          r += (lc[0] - r) * fill; g += (lc[1] - g) * fill; b += (lc[2] - b) * fill;
        }
        if (display.otherOutline > 0 && edge(row, col, other, lab[i * 2 + other])) {
          const a = display.otherOutline;
          r += (OTHER_LAYER_RGB[0] - r) * a; g += (OTHER_LAYER_RGB[1] - g) * a; b += (OTHER_LAYER_RGB[2] - b) * a;
        }
        if (edge(row, col, layer, v)) {
          const oc = selected ? SELECTED_RGB : OUTLINE_RGB;
          const a = display.outline;
          r += (oc[0] - r) * a; g += (oc[1] - g) * a; b += (oc[2] - b) * a;
        }
        const o = ((row - r0) * w + (col - c0)) * 4;
        px[o] = r * 255; px[o + 1] = g * 255; px[o + 2] = b * 255; px[o + 3] = 255;
      }
    }
    this.scratch.width = w;
    this.scratch.height = h;
    this.scratch.getContext('2d').putImageData(out, 0, 0);
    ctx.imageSmoothingEnabled = false;
    const [x, y] = view.toCanvas(r0, c0);
    ctx.drawImage(this.scratch, x, y, w * view.scale, h * view.scale);
  }

  finish() { this.ctx.getImageData(0, 0, 1, 1); }
}
