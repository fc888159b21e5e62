// The labels in the browser: what the server has acknowledged (`confirmed`, at `revision`) and what is
// shown (`shown`: confirmed plus the previews of edits still on their way). Both are (H, W, 2) int32,
// interleaved like the server's array. Per-cell statistics (area, centroid) are kept up to date from each
// patch's before/after values, so the cell list never rescans a 2048² task.
export class Labels {
  constructor(data, height, width, revision, { blank = false } = {}) {
    this.height = height;
    this.width = width;
    this.layers = 2;
    this.confirmed = data;
    // a blank big task's arrays are filled chunk by chunk (fillChunk): fresh zeros cost nothing until written
    this.shown = blank ? new Int32Array(data.length) : data.slice();
    this.revision = revision;
    this.stats = [new Map(), new Map()];
    this.maxId = 0;
    if (!blank) this.countAll();
  }

  static blank(height, width, revision) {
    return new Labels(new Int32Array(height * width * 2), height, width, revision, { blank: true });
  }

  countAll() {
    this.stats = [new Map(), new Map()];
    this.maxId = 0;
    this.countBox([0, 0, this.height, this.width]);
  }

  // add the cells' pixels inside box to the statistics
  countBox([y0, x0, y1, x1]) {
    const d = this.confirmed;
    const w = this.width;
    // runs of one id along a row cost one map update, not one per pixel
    for (let layer = 0; layer < 2; layer++) {
      for (let row = y0; row < y1; row++) {
        const base = row * w * 2 + layer;
        let col = x0;
        while (col < x1) {
          const id = d[base + col * 2];
          let end = col + 1;
          while (end < x1 && d[base + end * 2] === id) end++;
          if (id !== 0) this.addRun(layer, id, row, col, end);
          col = end;
        }
      }
    }
  }

  // a chunk from the server, (h, w, 2) at box's corner, into the confirmed and shown labels (a blank box)
  fillChunk(box, data) {
    const [y0, x0, y1, x1] = box;
    const rowLen = (x1 - x0) * 2;
    for (let y = y0; y < y1; y++) {
      const src = data.subarray((y - y0) * rowLen, (y - y0 + 1) * rowLen);
      const at = (y * this.width + x0) * 2;
      this.confirmed.set(src, at);
      this.shown.set(src, at);
    }
    this.countBox(box);
  }

  addRun(layer, id, row, col0, col1) {
    const n = col1 - col0;
    let s = this.stats[layer].get(id);
    if (!s) {
      s = { area: 0, rowSum: 0, colSum: 0 };
      this.stats[layer].set(id, s);
    }
    s.area += n;
    s.rowSum += n * row;
    s.colSum += (col0 + col1 - 1) * n / 2;
    if (id > this.maxId) this.maxId = id;
  }

  add(layer, id, row, col, sign) {
    let s = this.stats[layer].get(id);
    if (!s) {
      s = { area: 0, rowSum: 0, colSum: 0 };
      this.stats[layer].set(id, s);
    }
    s.area += sign;
    s.rowSum += sign * row;
    s.colSum += sign * col;
    if (s.area <= 0) this.stats[layer].delete(id);
    if (sign > 0 && id > this.maxId) this.maxId = id;
  }

  replace(data, revision) {
    this.confirmed = data;
    this.shown = data.slice();
    this.revision = revision;
    this.countAll();
  }

  // the id at integer (row, col) of the shown labels, or 0 outside
  at(layer, row, col) {
    if (row < 0 || col < 0 || row >= this.height || col >= this.width) return 0;
    return this.shown[(row * this.width + col) * 2 + layer];
  }

  nextId() { return this.maxId + 1; }

  // the server's patch, into the confirmed labels; returns its box
  applyPatch({ layer, box, before, after }) {
    const [y0, x0, y1, x1] = box;
    const bw = x1 - x0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const k = (y - y0) * bw + (x - x0);
        const a = before[k];
        const b = after[k];
        if (a === b) continue;
        if (a) this.add(layer, a, y, x, -1);
        if (b) this.add(layer, b, y, x, 1);
        this.confirmed[(y * this.width + x) * 2 + layer] = b;
      }
    }
    return box;
  }

  // shown := confirmed inside box (both layers)
  restore(box) {
    const [y0, x0, y1, x1] = box;
    for (let y = y0; y < y1; y++) {
      const a = (y * this.width + x0) * 2;
      this.shown.set(this.confirmed.subarray(a, a + (x1 - x0) * 2), a);
    }
  }

  // both layers of a box as one contiguous block, the layout texSubImage2D wants
  block(box) {
    const [y0, x0, y1, x1] = box;
    const rowLen = (x1 - x0) * 2;
    const out = new Int32Array((y1 - y0) * rowLen);
    for (let y = y0; y < y1; y++) {
      const a = (y * this.width + x0) * 2;
      out.set(this.shown.subarray(a, a + rowLen), (y - y0) * rowLen);
    }
    return out;
  }

  // cells of a layer sorted by id: [{id, area, row, col}]
  cells(layer) {
    return [...this.stats[layer].entries()].sort((a, b) => a[0] - b[0])
      .map(([id, s]) => ({ id, area: s.area, row: s.rowSum / s.area, col: s.colSum / s.area }));
  }
}

export function unionBox(a, b) {
  if (!a) return b;
  if (!b) return a;
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
}
