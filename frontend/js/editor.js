// The label editor, shared by the crowd task page and the reviewer page: it loads a task through a Client,
// shows it with the WebGL2 renderer (Canvas2D where WebGL2 is missing), turns mouse and keys into edits,
// previews them at once and sends them through the edit queue; the server's patches are the truth.
import { Canvas2DRenderer } from './canvas2d.js';
import { Channels, splitChannels } from './channels.js';
import { CellList } from './celllist.js';
import { chunkBox, chunksIn, eachLimited, levelFor, scatterChannels } from './chunks.js';
import { actionFor, typing } from './keymap.js';
import { Labels, unionBox } from './labels.js';
import { buildPanels } from './panels.js';
import { EditQueue } from './queue.js';
import { GLRenderer } from './renderer.js';
import { chunks, simplify, strokeMask, tracePoints } from './stroke.js';
import { BY_NAME, cellEdit } from './tools.js';
import { Viewport } from './view.js';

const FILL_STEPS = [0, 0.3, 0.6];

function strokeId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
const OUTLINE_STEPS = [1, 0.5, 0];
const MAX_BRUSH = 100;

export class Editor {
  // client: api.Client for this task; info: the task JSON; readOnly: nothing can be edited
  constructor(container, client, info, { readOnly = false, renderer = 'auto' } = {}) {
    this.container = container;
    this.client = client;
    this.info = info;
    this.readOnly = readOnly;
    this.rendererChoice = renderer;
    this.tool = 'paint';
    this.lastBrushTool = 'erase';
    this.radius = 2;
    this.overwrite = false;
    this.display = { layer: 0, fill: FILL_STEPS[1], outline: OUTLINE_STEPS[0], otherOutline: 0, highlight: true, selected: 0 };
    this.pending = []; // seeds (split) or picked cells (replace, swap) of a multi-click tool
    this.pointer = null; // last pointer position on the canvas, in canvas pixels
    this.drag = null;
    this.spaceHeld = false;
    this.frame = null;
    this.timings = { frames: 0 };
    this.overlayHooks = []; // (ctx, view) => void: pages draw their own marks on the overlay (qc.js)
    // resolves once the task is first drawn: for a big task the coarse view, before its full-resolution chunks
    this.firstView = new Promise((resolve) => { this.shownFirst = resolve; });
    this.queue = new EditQueue({
      send: (item) => this.sendItem(item),
      onDone: (item, result) => this.acknowledged(item, result),
      onRefused: (item, err) => this.refused(item, err),
      onChange: () => this.showQueue(),
    });
  }

  // --- loading -------------------------------------------------------------------------------------------
  // arrays: the [image, labels] fetch, when the page started it early (it needs nothing from the task JSON)
  async load(arrays = null) {
    if (this.info.chunks) {
      await this.loadChunked();
      return;
    }
    this.complete = true;
    const t = [performance.now()];
    const [image, labels] = await (arrays || Promise.all([this.client.image(), this.client.labels()]));
    t.push(performance.now());
    const [h, w] = this.info.shape;
    const count = image.shape[2];
    this.planes = splitChannels(image.data, h, w, count);
    this.labels = new Labels(labels.data, h, w, labels.revision);
    this.brushLabel = this.labels.nextId();
    this.channels = new Channels(this.info.channels, this.planes, this.info.project, this.info.roles || {});
    this.view = new Viewport(w, h);
    this.build();
    this.channels.mount(this.channelList);
    this.channels.onChange(() => { this.requestDraw(); this.showChannelState(); });
    t.push(performance.now());
    this.renderer.setImage(this.planes, w, h);
    this.renderer.setLabels(this.labels);
    this.renderer.finish();
    t.push(performance.now());
    this.resize();
    this.view.fit();
    this.showCells();
    this.showTool();
    this.showQueue();
    this.drawNow();
    this.renderer.finish(); // loaded means drawn, not just queued on the GPU
    t.push(performance.now());
    // where opening a task spends its time (bench/editor.py reports it)
    this.timings.open = { prepareMs: t[2] - t[1], uploadMs: t[3] - t[2], drawMs: t[4] - t[3] };
    this.shownFirst();
  }

  // --- a big task: the coarse level in view first, then level 0, nearest the middle of the view first -----------
  async loadChunked() {
    const t = [performance.now()];
    const layout = this.info.chunks;
    const [h, w] = this.info.shape;
    this.complete = false;
    this.view = new Viewport(w, h);
    this.labels = Labels.blank(h, w, this.info.revision);
    this.brushLabel = 1;
    this.build();
    this.resize();
    this.view.fit();
    const level = levelFor(layout, this.view.scale);
    // the display settings first (this project's saved ones), so that the first view fetches only the channels
    // it shows; the rest come right after it (fetchOtherChannels)
    // (this.channels only once there are textures to draw: a frame drawn meanwhile draws nothing)
    const channels = new Channels(this.info.channels, [], this.info.project, this.info.roles || {});
    const shown = channels.shownIndices();
    const first = shown.length ? shown : [channels.active];
    const coarse = await this.fetchLevel(layout, level, this.view.visible(), first);
    t.push(performance.now());
    channels.arrived(first, coarse.planes);
    this.channels = channels;
    this.channels.mount(this.channelList);
    this.channels.onChange(() => { this.requestDraw(); this.showChannelState(); });
    this.showChannelState();
    const Type = coarse.planes[first[0]].constructor;
    this.planes = coarse.planes.map(() => new Type(h * w));
    this.renderer.allocate(w, h, this.planes.length, Type);
    this.renderer.uploadImage(this.planes, [0, 0, 0, 0]);
    this.renderer.setLabels(this.labels, { upload: false });
    this.renderer.expectChunks(layout.size);
    if (this.renderer.setCoarse) this.renderer.setCoarse(coarse.planes, coarse.labels, coarse.width, coarse.height, level);
    t.push(performance.now());
    this.showTool();
    this.showQueue();
    this.drawNow();
    this.renderer.finish();
    t.push(performance.now());
    performance.mark('cellloop-first-view');
    document.body.dataset.firstView = 'true';
    // what opening spends before the first view (bench/editor.py): the coarse chunks fetched and decoded, ranges
    // and textures, the first frame
    this.timings.open = { level, coarseChunks: coarse.count, arraysMs: t[1] - t[0], prepareMs: t[2] - t[1], drawMs: t[3] - t[2] };
    this.say('Loading full resolution…');
    this.shownFirst();
    await this.fetchOtherChannels(layout, coarse);
    await this.fetchFullResolution(layout);
    this.renderer.dropCoarse && this.renderer.dropCoarse();
    this.brushLabel = this.labels.nextId();
    this.complete = true;
    this.timings.open.completeMs = performance.now() - t[0];
    this.say('');
    this.showCells();
    this.showTool();
    this.showQueue();
    this.requestDraw();
  }

  // the chunks of `level` over an image rectangle, assembled into that level's planes (one per channel, null for
  // the channels not asked for) and interleaved labels. Each channel comes alone: the server stores each
  // channel's chunks as well as the whole ones and hands a stored one out as it is (cutting channels out of a
  // whole chunk would cost it tens of ms of CPU per chunk)
  async fetchLevel(layout, level, rect, channels) {
    const [lh, lw] = layout.levels[level];
    const s = layout.size;
    const labels = new Int32Array(lh * lw * 2);
    const planes = this.info.channels.map(() => null);
    const wanted = chunksIn(layout, level, rect);
    const work = wanted.flatMap((c) => [...channels.map((k) => ['image', c, k]), ['labels', c]]);
    await eachLimited(work, 6, async ([kind, [i, j], k]) => {
      if (kind === 'image') {
        this.fillChannels(planes, await this.client.imageChunk(level, i, j, [k]), [k], [lh, lw], i * s, j * s);
      } else {
        // display only (the labels edited are level 0's): any revision will do
        const chunk = await this.client.labelsChunk(level, i, j);
        const rowLen = chunk.shape[1] * 2;
        for (let y = 0; y < chunk.shape[0]; y++) {
          labels.set(chunk.data.subarray(y * rowLen, (y + 1) * rowLen), ((i * s + y) * lw + j * s) * 2);
        }
      }
    });
    return { planes, labels, width: lw, height: lh, count: wanted.length, level, chunks: wanted };
  }

  // a chunk holding channels `channels` (in that order) into planes[c] of a level [height, width] at (y0, x0),
  // each plane made on its first chunk (8- and 16-bit data keep their type)
  fillChannels(planes, chunk, channels, [height, width], y0, x0) {
    const d = chunk.data;
    const Type = d instanceof Uint16Array || d instanceof Uint8Array ? d.constructor : Float32Array;
    for (const c of channels) if (!planes[c]) planes[c] = new Type(height * width);
    scatterChannels(chunk, channels.map((c) => planes[c]), width, y0, x0);
  }

  // the channels the first view did not fetch, at its level over its chunks: whole chunks (every channel, the
  // stored chunk as it is), and a channel switched on meanwhile alone, at once; each channel's range and coarse
  // texture once its values are in
  async fetchOtherChannels(layout, coarse) {
    const s = layout.size;
    const pending = new Set(this.channels.missing());
    if (!pending.size) return;
    const all = this.info.channels.map((_, c) => c);
    const arrived = (list) => {
      const now = list.filter((c) => !this.channels.channels[c].loaded);
      if (!now.length) return;
      if (this.renderer.updateCoarse) this.renderer.updateCoarse(coarse.planes, now);
      this.channels.arrived(now, coarse.planes);
    };
    const alone = async (list) => {
      await eachLimited(coarse.chunks.flatMap((c) => list.map((k) => [c, k])), 2, async ([[i, j], k]) => {
        const chunk = await this.client.imageChunk(coarse.level, i, j, [k]);
        this.fillChannels(coarse.planes, chunk, [k], [coarse.height, coarse.width], i * s, j * s);
      });
      arrived(list);
    };
    const extra = [];
    let loading = true;
    this.channels.onChange(() => {
      if (!loading) return;
      const now = this.channels.shownIndices().filter((c) => pending.has(c));
      now.forEach((c) => pending.delete(c));
      if (now.length) extra.push(alone(now));
    });
    await eachLimited(coarse.chunks, 4, async ([i, j]) => {
      const chunk = await this.client.imageChunk(coarse.level, i, j);
      this.fillChannels(coarse.planes, chunk, all, [coarse.height, coarse.width], i * s, j * s);
    });
    loading = false;
    arrived(all);
    await Promise.all(extra);
  }

  // every level-0 chunk, those in view first (the view at the time each is picked: zoom in while it loads and
  // that region comes next); the labels all of one revision (the first chunk's)
  async fetchFullResolution(layout) {
    const [h, w] = this.info.shape;
    const pending = new Map(chunksIn(layout, 0, [0, 0, h, w]).map((c) => [c.join(','), c]));
    const pick = () => {
      const rect = this.view.visible();
      const inView = chunksIn(layout, 0, rect).find((c) => pending.has(c.join(',')));
      const c = inView || chunksIn(layout, 0, [0, 0, h, w], [(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2])
        .find((x) => pending.has(x.join(',')));
      pending.delete(c.join(','));
      return c;
    };
    let pinned;
    let stale = false;
    const one = async (c) => {
      const box = chunkBox(layout, c);
      const [image, labels] = await Promise.all([this.client.imageChunk(0, ...c),
        this.client.labelsChunk(0, ...c, pinned).catch((err) => {
          if (err.status === 409) { stale = true; return null; }
          throw err;
        })]);
      scatterChannels(image, this.planes, w, box[0], box[1]);
      this.renderer.uploadImage(this.planes, box);
      if (labels) {
        if (pinned === undefined) pinned = labels.revision;
        this.labels.fillChunk(box, labels.data);
        this.renderer.loadLabels(box);
      }
      this.renderer.markLoaded(c);
      // the view shows the coarse level until every chunk in it is in: draw once it is, not for each chunk
      const [r0, c0, r1, c1] = this.view.visible();
      const inView = box[0] < r1 && box[2] > r0 && box[1] < c1 && box[3] > c0;
      if (inView && this.renderer.viewLoaded(this.view)) this.requestDraw();
    };
    await one(pick());
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (pending.size) await one(pick());
    }));
    this.labels.revision = pinned;
    // someone changed the task while it loaded: labels again, all at its new revision
    if (stale) await this.reloadChunkedLabels();
  }

  async fetchChunkedLabels() {
    const layout = this.info.chunks;
    const [h, w] = this.info.shape;
    for (let attempt = 0; ; attempt++) {
      const labels = Labels.blank(h, w, 0);
      let pinned;
      const one = async (c) => {
        const chunk = await this.client.labelsChunk(0, ...c, pinned);
        if (pinned === undefined) pinned = chunk.revision;
        labels.fillChunk(chunkBox(layout, c), chunk.data);
      };
      const order = chunksIn(layout, 0, [0, 0, h, w]);
      try {
        await one(order[0]);
        await eachLimited(order.slice(1), 4, one);
        labels.revision = pinned;
        return labels;
      } catch (err) {
        if (err.status !== 409 || attempt >= 2) throw err;
      }
    }
  }

  async reloadChunkedLabels() {
    this.labels = await this.fetchChunkedLabels();
    this.renderer.setLabels(this.labels);
  }

  makeRenderer(canvas) {
    if (this.rendererChoice !== 'canvas2d') {
      try {
        return new GLRenderer(canvas);
      } catch (err) {
        if (this.rendererChoice === 'webgl2') throw err;
      }
    }
    return new Canvas2DRenderer(canvas);
  }

  // --- DOM -----------------------------------------------------------------------------------------------
  build() {
    buildPanels(this);
    this.stage.addEventListener('pointerdown', (ev) => this.pointerDown(ev));
    this.stage.addEventListener('pointermove', (ev) => this.pointerMove(ev));
    this.stage.addEventListener('pointerup', (ev) => this.pointerUp(ev));
    this.stage.addEventListener('pointerleave', () => { this.pointer = null; this.drawOverlay(); });
    this.stage.addEventListener('wheel', (ev) => this.wheel(ev), { passive: false });
    this.stage.addEventListener('contextmenu', (ev) => ev.preventDefault());
    this.keyHandler = (ev) => this.keyDown(ev);
    this.keyUpHandler = (ev) => { if (ev.key === ' ') { this.spaceHeld = false; this.showTool(); } };
    document.addEventListener('keydown', this.keyHandler);
    document.addEventListener('keyup', this.keyUpHandler);
    this.resizeObserver = new ResizeObserver(() => { this.resize(); this.requestDraw(); });
    this.resizeObserver.observe(this.stage);
    if (this.channels) this.showChannelState();
  }

  // the reviewer page opens task after task in one page: let go of listeners and GPU memory
  destroy() {
    document.removeEventListener('keydown', this.keyHandler);
    document.removeEventListener('keyup', this.keyUpHandler);
    if (this.resizeObserver) this.resizeObserver.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.renderer && this.renderer.dispose) this.renderer.dispose();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.stage.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.stage.clientHeight * dpr));
    if (this.canvas.width === w && this.canvas.height === h) return;
    const first = this.canvas.width <= 300 && this.canvas.height <= 150;
    for (const c of [this.canvas, this.overlay]) { c.width = w; c.height = h; }
    this.view.resize(w, h);
    if (first) this.view.fit();
  }

  say(text, kind = 'info') {
    this.message.textContent = text;
    this.message.dataset.kind = kind;
  }

  showQueue() {
    const n = this.queue.length;
    this.queueInfo.textContent = this.queue.offline ? `offline: ${n} edit(s) waiting, retrying…`
      : n ? `${n} edit(s) saving…` : `saved · revision ${this.labels ? this.labels.revision : ''}`;
    this.queueInfo.dataset.pending = n;
  }

  showTool() {
    for (const [name, b] of Object.entries(this.toolButtons)) b.classList.toggle('active', name === this.tool);
    this.brushInfo.textContent = `size ${this.radius} · label ${this.brushLabel}`;
    this.stage.style.cursor = this.spaceHeld ? 'grab' : this.tool === 'select' ? 'default' : 'crosshair';
    this.drawOverlay();
  }

  showChannelState() {
    this.grayBox.checked = this.channels.gray;
    this.invertBox.checked = this.channels.invert;
    for (const row of this.channelList.children) row.classList.toggle('active', Number(row.dataset.channel) === this.channels.active);
  }

  // changed: the ids a patch touched on the shown layer; only their rows change (a 8192² task lists 64,000 cells)
  showCells(changed = null) {
    if (!this.cellList) this.cellList = new CellList(this.cellListElement, this.cellCount, (id) => this.selectCell(id, true));
    if (changed && this.cellsShown && !this.cellTimer) {
      this.cellList.update(changed);
      return;
    }
    if (this.cellTimer) return;
    // a patch can land many times a second; the list need not follow every one
    this.cellTimer = setTimeout(() => {
      this.cellTimer = null;
      const stats = this.labels.stats[this.display.layer];
      this.cellList.selected = this.display.selected;
      this.cellList.set([...stats.keys()].sort((a, b) => a - b), stats);
      this.cellsShown = true;
    }, 50);
  }

  // --- drawing -------------------------------------------------------------------------------------------
  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.drawNow(); });
  }

  drawNow() {
    if (!this.channels) return; // a big task's first chunks are still on their way
    this.renderer.draw(this.view, { ...this.display, channels: this.channels.shown(), invert: this.channels.invert });
    this.timings.frames++;
    this.drawOverlay();
  }

  drawOverlay() {
    const ctx = this.overlay.getContext('2d');
    ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
    const s = this.view.scale;
    ctx.lineWidth = Math.max(1, window.devicePixelRatio || 1);
    if (this.pointer && !this.readOnly && (this.tool === 'paint' || this.tool === 'erase') && !this.spaceHeld) {
      const [row, col] = this.pointerPixel();
      const [x, y] = this.view.toCanvas(row + 0.5, col + 0.5);
      ctx.strokeStyle = this.tool === 'paint' ? '#fff' : '#f66';
      ctx.beginPath();
      ctx.arc(x, y, Math.max(2, (this.radius + 0.5) * s), 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (this.pointer && !this.readOnly && (this.tool === 'assist_click' || this.tool === 'assist_accept') && !this.spaceHeld) {
      // the assist cursor: a ring around the pixel the click will seed from
      const [row, col] = this.pointerPixel();
      const [x, y] = this.view.toCanvas(row + 0.5, col + 0.5);
      ctx.strokeStyle = '#4df';
      ctx.beginPath();
      ctx.arc(x, y, Math.max(4, 3 * s), 0, 2 * Math.PI);
      ctx.moveTo(x - 2, y); ctx.lineTo(x + 2, y); ctx.moveTo(x, y - 2); ctx.lineTo(x, y + 2);
      ctx.stroke();
    }
    if (this.boxPreview) {
      const [r0, c0, r1, c1] = this.boxPreview.box;
      const [x0, y0] = this.view.toCanvas(r0, c0);
      const [x1, y1] = this.view.toCanvas(r1, c1);
      ctx.strokeStyle = '#4df';
      ctx.setLineDash([6, 4]);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    if (this.drag && this.drag.kind === 'box') {
      const [y0, x0] = this.view.toCanvas(...this.drag.start).reverse();
      const [y1, x1] = this.view.toCanvas(...this.drag.end).reverse();
      ctx.strokeStyle = '#ff0';
      ctx.setLineDash([6, 4]);
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.setLineDash([]);
    }
    ctx.fillStyle = '#ff0';
    for (const p of this.pending) {
      if (!p.point) continue;
      const [x, y] = this.view.toCanvas(p.point[0] + 0.5, p.point[1] + 0.5);
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, 2 * Math.PI);
      ctx.fill();
    }
    for (const hook of this.overlayHooks) hook(ctx, this.view);
  }

  // --- pointer -------------------------------------------------------------------------------------------
  canvasPoint(ev) {
    const r = this.stage.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, r.width);
    return [(ev.clientX - r.left) * dpr, (ev.clientY - r.top) * dpr];
  }

  pointerPixel() {
    const [row, col] = this.view.toImage(...this.pointer);
    return [Math.floor(row), Math.floor(col)];
  }

  inside([row, col]) { return row >= 0 && col >= 0 && row < this.labels.height && col < this.labels.width; }

  pointerDown(ev) {
    this.pointer = this.canvasPoint(ev);
    this.stage.setPointerCapture(ev.pointerId);
    if (ev.button === 1 || (ev.button === 0 && this.spaceHeld)) {
      this.drag = { kind: 'pan', last: this.pointer };
      ev.preventDefault();
      return;
    }
    if (ev.button !== 0) return;
    if (!this.complete && this.tool !== 'select') { this.say('Still loading the full-resolution labels: edits open in a moment.'); return; }
    const p = this.pointerPixel();
    const input = BY_NAME[this.tool].input;
    if (this.readOnly && this.tool !== 'select') { this.say('This task is read-only.'); return; }
    if (input === 'stroke') {
      if (!this.inside(p)) return;
      this.drag = { kind: 'stroke', tool: this.tool, points: [p], box: null };
      this.previewStroke(this.drag, [p]);
    } else if (input === 'box') {
      this.drag = { kind: 'box', start: this.view.toImage(...this.pointer), end: this.view.toImage(...this.pointer) };
    } else if (this.inside(p)) {
      this.click(p, ev);
    }
  }

  pointerMove(ev) {
    this.pointer = this.canvasPoint(ev);
    const d = this.drag;
    if (d && d.kind === 'pan') {
      this.view.panBy(this.pointer[0] - d.last[0], this.pointer[1] - d.last[1]);
      d.last = this.pointer;
      this.requestDraw();
    } else if (d && d.kind === 'stroke') {
      // coalesced events: a fast drag reports every sample the mouse made
      const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
      const pts = (events.length ? events : [ev]).map((e) => {
        const [row, col] = this.view.toImage(...this.canvasPoint(e));
        return [Math.min(Math.max(Math.floor(row), 0), this.labels.height - 1), Math.min(Math.max(Math.floor(col), 0), this.labels.width - 1)];
      });
      const last = d.points[d.points.length - 1];
      d.points.push(...pts);
      this.previewStroke(d, [last, ...pts]);
    } else if (d && d.kind === 'box') {
      d.end = this.view.toImage(...this.pointer);
    }
    this.showCursorInfo();
    this.drawOverlay();
  }

  pointerUp(ev) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    if (d.kind === 'stroke') this.finishStroke(d);
    else if (d.kind === 'box') this.finishBox(d);
    this.drawOverlay();
  }

  wheel(ev) {
    ev.preventDefault();
    const [cx, cy] = this.canvasPoint(ev);
    this.view.zoomAt(cx, cy, Math.pow(1.2, -ev.deltaY / 100));
    this.requestDraw();
  }

  showCursorInfo() {
    if (!this.pointer || !this.planes) return;
    const [row, col] = this.pointerPixel();
    if (!this.inside([row, col])) { this.cursorInfo.textContent = '\u00a0'; return; }
    const id = this.labels.at(this.display.layer, row, col);
    const stats = id ? this.labels.stats[this.display.layer].get(id) : null;
    const value = this.planes[this.channels.active][row * this.labels.width + col];
    this.cursorInfo.textContent = `(${row}, ${col}) · ${this.channels.channels[this.channels.active].name} ${+value.toPrecision(5)} · `
      + (id ? `cell ${id}, ${stats ? stats.area : 0} px` : 'background');
    this.cursorInfo.dataset.id = id;
  }

  // --- previews: the stroke drawn locally at once, replaced by the server's patch -------------------------
  stamp(tool, { label, overwrite, layer, radius }, points) {
    const { box, mask } = strokeMask(points, radius, this.labels.height, this.labels.width);
    const [y0, x0, y1, x1] = box;
    const bw = x1 - x0;
    const shown = this.labels.shown;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        if (!mask[(y - y0) * bw + (x - x0)]) continue;
        const i = (y * this.labels.width + x) * 2 + layer;
        if (tool === 'erase') { if (!label || shown[i] === label) shown[i] = 0; }
        else if (overwrite || shown[i] === 0) shown[i] = label;
      }
    }
    return box;
  }

  previewStroke(d, points) {
    if (!d.params) {
      const layer = this.display.layer;
      // DeepCell Label's eraser: with a cell selected it erases that cell only; with none, every cell under it
      const selected = this.display.selected && this.labels.stats[layer].has(this.display.selected) ? this.display.selected : 0;
      d.params = { label: d.tool === 'erase' ? selected : this.brushLabel, overwrite: this.overwrite, layer, radius: this.radius };
    }
    const box = this.stamp(d.tool, d.params, points);
    d.box = unionBox(d.box, box);
    this.renderer.updateLabels(box);
    this.requestDraw();
  }

  // re-derive what is shown inside box: the confirmed labels plus every preview still waiting
  reshow(box) {
    if (!box) return;
    this.labels.restore(box);
    for (const item of [this.queue.inFlight, ...this.queue.items]) {
      if (item && item.shownPatch) this.stampPatch(item.shownPatch);
      else if (item && item.preview) this.stamp(item.tool, item.params, item.params.points);
    }
    if (this.boxPreview && this.boxPreview.patch) this.stampPatch(this.boxPreview.patch);
    this.renderer.updateLabels(box);
    this.requestDraw();
  }

  // show a patch's after values (a preview the server computed) over what is shown
  stampPatch(patch) {
    if (!patch.before.length) return;
    const [y0, x0, y1, x1] = patch.box;
    const { shown, width } = this.labels;
    let i = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) shown[(y * width + x) * 2 + patch.layer] = patch.after[i++];
    }
  }

  finishStroke(d) {
    const points = simplify(tracePoints(d.points));
    const parts = chunks(points);
    const base = { layer: d.params.layer, radius: d.params.radius };
    // the parts of one long stroke share an id: the server makes them one undo step
    if (parts.length > 1) base.stroke = strokeId();
    parts.forEach((pts, i) => {
      const params = d.tool === 'paint' ? { ...base, points: pts, label: d.params.label, overwrite: d.params.overwrite }
        : d.params.label ? { ...base, points: pts, label: d.params.label } : { ...base, points: pts };
      const box = strokeMask(pts, d.params.radius, this.labels.height, this.labels.width).box;
      this.queue.push({ action: 'edit', tool: d.tool, params, preview: true, box: i === 0 ? unionBox(box, d.box) : box });
    });
    // the sent trace is the simplified one: show exactly what the server will store
    this.reshow(d.box);
    if (d.tool === 'paint' && d.params.label === this.brushLabel) this.selectCell(d.params.label, false);
  }

  finishBox(d) {
    const [r0, c0] = d.start.map((v) => Math.round(v));
    const [r1, c1] = d.end.map((v) => Math.round(v));
    const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
    const box = [clamp(r0, this.labels.height), clamp(c0, this.labels.width), clamp(r1, this.labels.height), clamp(c1, this.labels.width)];
    if (Math.abs(box[2] - box[0]) < 2 || Math.abs(box[3] - box[1]) < 2) { this.say('Drag a box of at least 2×2 pixels.'); return; }
    if (this.tool === 'assist_box') { this.openBoxPreview(box); return; }
    this.edit('threshold', { layer: this.display.layer, box, channel: this.channels.active });
  }

  // --- the assist box: the server's segmentation of the box previewed, the slider re-asks, Enter applies ------
  openBoxPreview([a, b, c, d]) {
    this.closeBoxPreview();
    const box = [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
    this.boxPreview = { box, layer: this.display.layer, overwrite: this.overwrite, sensitivity: Number(this.sensitivity.value),
      patch: null, seq: 0 };
    this.boxPanel.hidden = false;
    this.say('Assist box: move the sensitivity slider to see the model\'s cells change; Enter (or Apply) stores them, Esc cancels.');
    this.requestPreview();
  }

  boxParams(bp) { return { layer: bp.layer, box: bp.box, sensitivity: bp.sensitivity, overwrite: bp.overwrite }; }

  boxSensitivity(value) {
    const bp = this.boxPreview;
    if (!bp) return;
    bp.sensitivity = value;
    // a dragged slider fires many times a second: ask for the value it rests on
    clearTimeout(this.previewTimer);
    this.previewTimer = setTimeout(() => this.requestPreview(), 60);
  }

  async requestPreview() {
    const bp = this.boxPreview;
    if (!bp) return;
    const seq = ++bp.seq;
    bp.loading = true;
    await this.queue.idle(); // the preview is of the labels every queued edit leads to
    if (this.boxPreview !== bp || seq !== bp.seq) return;
    try {
      const t0 = performance.now();
      const { patch } = await this.client.preview(this.labels.revision, 'assist_box', this.boxParams(bp));
      if (this.boxPreview !== bp || seq !== bp.seq) return; // a later slider value, or closed meanwhile
      const old = bp.patch && bp.patch.before.length ? bp.patch.box : null;
      bp.patch = patch;
      bp.shown = bp.sensitivity;
      bp.loading = false;
      this.reshow(unionBox(old, patch.before.length ? patch.box : null));
      this.timings.preview = { ms: performance.now() - t0, sensitivity: bp.sensitivity };
      if (!patch.before.length) this.say(`Assist box at sensitivity ${bp.sensitivity}: the model changes nothing here.`);
      else this.say(`Assist box at sensitivity ${bp.sensitivity}: Enter (or Apply) stores it, Esc cancels.`);
    } catch (err) {
      if (this.boxPreview !== bp || seq !== bp.seq) return;
      bp.loading = false;
      this.say(`Assist box: ${err.message}`, 'error');
    }
  }

  applyBoxPreview() {
    const bp = this.boxPreview;
    this.boxPreview = null;
    this.boxPanel.hidden = true;
    clearTimeout(this.previewTimer);
    if (this.readOnly) { if (bp.patch) this.reshow(bp.patch.box); return; }
    // what the preview shows stays shown until the server's patch (the same, unless the task moved on) replaces it
    const shown = bp.patch && bp.shown === bp.sensitivity && bp.patch.before.length ? bp.patch : null;
    this.queue.push({ action: 'edit', tool: 'assist_box', params: this.boxParams(bp), preview: !!shown, shownPatch: shown,
      box: shown ? shown.box : null });
    if (bp.patch && !shown) this.reshow(bp.patch.before.length ? bp.patch.box : null);
    this.drawOverlay();
  }

  closeBoxPreview() {
    const bp = this.boxPreview;
    if (!bp) return;
    this.boxPreview = null;
    this.boxPanel.hidden = true;
    clearTimeout(this.previewTimer);
    if (bp.patch && bp.patch.before.length) this.reshow(bp.patch.box);
    this.drawOverlay();
  }

  // --- clicks --------------------------------------------------------------------------------------------
  click(p, ev) {
    const layer = this.display.layer;
    const id = this.labels.at(layer, p[0], p[1]);
    const tool = this.tool;
    const input = BY_NAME[tool].input;
    if (tool === 'select') { this.selectCell(id, false); return; }
    if (tool === 'flood') { this.edit('flood', { layer, point: p, label: this.brushLabel }); return; }
    if (tool === 'assist_click' || tool === 'assist_accept') {
      // the server draws the model's cell; its patch is the preview (the ring showed where it seeds)
      this.edit(tool, { layer, point: p, overwrite: this.overwrite });
      return;
    }
    if (input === 'cell') {
      if (!id) { this.say(`${BY_NAME[tool].label}: click a cell.`); return; }
      this.selectCell(id, false);
      this.edit(tool, cellEdit(tool, { label: id, point: tool === 'trim' ? p : null, channel: this.channels.active, layer }));
      return;
    }
    if (input === 'seeds') {
      if (!id) { this.say('Split: click seeds inside one cell.'); return; }
      if (this.pending.length && this.pending[0].id !== id) { this.say(`Split: all seeds must lie in cell ${this.pending[0].id}.`); return; }
      this.pending.push({ point: p, id });
      if (this.pending.length >= 2 && !ev.shiftKey) this.run('apply');
      else this.say(`Split cell ${id}: ${this.pending.length} seed(s); click another (Shift+click for more, Enter applies, Esc cancels).`);
      this.drawOverlay();
      return;
    }
    if (input === 'pair') {
      if (!id) { this.say(`${BY_NAME[tool].label}: click a cell.`); return; }
      this.pending.push({ point: p, id });
      if (this.pending.length === 1) {
        this.selectCell(id, false);
        this.say(tool === 'merge' ? `Replace: cell ${id} keeps its id; click the cell to merge into it.` : `Swap: click the cell to swap with ${id}.`);
      } else {
        const [a, b] = this.pending.map((x) => x.id);
        this.pending = [];
        if (a === b) this.say('Pick two different cells.');
        else this.edit(tool, { layer, a, b });
      }
      this.drawOverlay();
    }
  }

  selectCell(id, jump) {
    this.display.selected = id || 0;
    if (id) this.brushLabel = id;
    if (jump && id) {
      const s = this.labels.stats[this.display.layer].get(id);
      if (s) this.view.centerOn(s.rowSum / s.area, s.colSum / s.area);
    }
    if (this.cellList) this.cellList.select(this.display.selected, jump);
    this.showTool();
    this.requestDraw();
  }

  stepCell(delta) {
    const cells = this.labels.cells(this.display.layer);
    if (!cells.length) return;
    let i = cells.findIndex((c) => c.id === this.display.selected);
    i = i < 0 ? (delta > 0 ? 0 : cells.length - 1) : (i + delta + cells.length) % cells.length;
    this.selectCell(cells[i].id, true);
  }

  setLayer(layer) {
    this.display.layer = layer;
    this.layerSelect.value = String(layer);
    this.display.selected = 0;
    this.showCells();
    this.requestDraw();
  }

  // --- edits ---------------------------------------------------------------------------------------------
  edit(tool, params) {
    if (this.readOnly) { this.say('This task is read-only.'); return; }
    if (!this.complete) { this.say('Still loading the full-resolution labels: edits open in a moment.'); return; }
    this.queue.push({ action: 'edit', tool, params });
  }

  sendItem(item) {
    const base = this.labels.revision;
    item.sentAt = performance.now();
    if (item.action === 'undo') return this.client.undo(base);
    if (item.action === 'redo') return this.client.redo(base);
    return this.client.edit(base, item.tool, item.params);
  }

  acknowledged(item, { patch, revision }) {
    const t0 = performance.now();
    let box = null;
    if (patch.before.length) box = this.labels.applyPatch(patch);
    this.labels.revision = revision;
    // the preview goes, the server's result stays
    const shown = unionBox(box, item.preview ? item.box : null);
    this.reshow(shown);
    const t1 = performance.now();
    this.timings.last = { tool: item.tool || item.action, queuedMs: item.sentAt - item.queuedAt, roundtripMs: t0 - item.sentAt, applyMs: t1 - t0,
      sent: this.client.traffic.sent, received: this.client.traffic.received, appliedAt: t1, sentAt: item.sentAt, box: shown };
    if (!patch.before.length && item.action === 'edit') this.say(`${BY_NAME[item.tool].label}: nothing changed.`);
    else this.say('');
    if (box) {
      const ids = new Set();
      if (patch.layer === this.display.layer) {
        for (const v of patch.before) if (v) ids.add(v);
        for (const v of patch.after) if (v) ids.add(v);
      }
      this.showCells(ids);
    }
    this.showQueue();
  }

  async refused(item, err) {
    const rollback = item.preview ? item.box : null;
    if (err.status === 409 && err.body && Number.isInteger(err.body.revision)) {
      // someone else changed the task (another tab, a reviewer): reload, and drop what was built on the old state
      const dropped = this.queue.clear();
      this.say(`This task changed elsewhere (now revision ${err.body.revision}); the labels were reloaded and your `
        + `last ${1 + dropped.length} edit(s) were not applied. Everything saved before is kept.`, 'error');
      await this.reload();
      return;
    }
    if (err.status === 409 && err.body && err.body.state) {
      this.queue.clear();
      this.say(`Not saved: ${err.message}.`, 'error');
      this.setReadOnly(true);
      await this.reload();
      return;
    }
    if (err.status === 409 && item.action !== 'edit') {
      this.say(`Nothing to ${item.action}.`);
      return;
    }
    this.reshow(rollback);
    this.say(`Not applied: ${err.message}`, 'error');
  }

  async reload() {
    this.closeBoxPreview(); // a preview of labels that are no longer the task's
    if (this.info.chunks) {
      await this.reloadChunkedLabels();
    } else {
      const labels = await this.client.labels();
      this.labels.replace(labels.data, labels.revision);
      this.renderer.setLabels(this.labels);
    }
    this.showCells();
    this.showQueue();
    this.requestDraw();
  }

  setReadOnly(readOnly) {
    this.readOnly = readOnly;
    for (const b of this.container.querySelectorAll('.toolbar button.tool, .toolbar select')) b.disabled = readOnly;
    this.undoButton.disabled = readOnly;
    this.redoButton.disabled = readOnly;
    if (this.newCellButton) this.newCellButton.disabled = readOnly;
  }

  // every edit made so far acknowledged (or refused)
  idle() { return this.queue.idle(); }

  // --- keys ----------------------------------------------------------------------------------------------
  keyDown(ev) {
    // keys belong to a form field being typed in, or to an open dialog (the submit confirmation)
    if (typing(ev) || !this.labels || !this.channels || document.querySelector('dialog[open]')) return;
    if (ev.key === ' ') {
      if (!this.spaceHeld) { this.spaceHeld = true; this.showTool(); }
      ev.preventDefault();
      return;
    }
    const action = actionFor(ev);
    if (!action) return;
    ev.preventDefault();
    this.run(action, ev);
  }

  run(action, ev = null) {
    const [kind, name] = action.split(':');
    if (kind === 'tool') { this.toolAction(name); return; }
    const handler = this.actions[action];
    if (handler) handler.call(this, ev);
  }

  toolAction(name) {
    const input = BY_NAME[name].input;
    if (this.readOnly && name !== 'select') { this.say('This task is read-only.'); return; }
    if (BY_NAME[name].assist && !(this.info.assist && this.info.assist.available)) {
      this.say(`${BY_NAME[name].label} is off: ${this.info.assist ? this.info.assist.reason : 'no model maps'}.`, 'error');
      return;
    }
    this.closeBoxPreview();
    // a key for a one-cell tool acts on the selected cell at once; with nothing selected it picks the tool
    if (input === 'cell' && this.display.selected && this.labels.stats[this.display.layer].has(this.display.selected)) {
      this.edit(name, cellEdit(name, { label: this.display.selected, channel: this.channels.active, layer: this.display.layer }));
      if (name === 'delete') this.selectCell(0, false);
      return;
    }
    this.pending = [];
    this.tool = name;
    if (name === 'paint' || name === 'erase') this.lastBrushTool = name === 'paint' ? 'erase' : 'paint';
    const hints = { assist_click: "Assist: click a missed cell to add the model's cell, or a cell to redraw it.",
      assist_box: 'Assist box: drag a box over the cells to re-segment.', assist_accept: "Accept: click where the model proposed a cell the labels lack.",
      split: 'Split: click two seeds in one cell.', merge: 'Replace: click the cell to keep, then the cell to merge into it.',
      swap: 'Swap: click two cells.', threshold: 'Threshold: drag a box over unlabelled bright pixels.' };
    this.say(hints[name] || (input === 'cell' ? `${BY_NAME[name].label}: click a cell.` : ''));
    this.showTool();
  }
}

Editor.prototype.actions = {
  swapBrush() { this.toolAction(this.tool === 'paint' ? 'erase' : 'paint'); },
  newCell() {
    if (this.readOnly) return;
    this.brushLabel = Math.max(this.labels.nextId(), this.brushLabel + 1);
    this.display.selected = this.brushLabel;
    this.toolAction('paint');
    this.say(`New cell ${this.brushLabel}: paint it with the brush.`);
  },
  brushBigger() { this.radius = Math.min(MAX_BRUSH, this.radius + 1); this.showTool(); },
  brushSmaller() { this.radius = Math.max(1, this.radius - 1); this.showTool(); },
  apply() {
    if (this.boxPreview) { this.applyBoxPreview(); return; }
    if (this.tool === 'split' && this.pending.length >= 2) {
      const seeds = this.pending.map((s) => s.point);
      this.pending = [];
      this.edit('split', { layer: this.display.layer, seeds, channel: this.channels.active });
      this.drawOverlay();
    }
  },
  cancel() {
    this.closeBoxPreview();
    this.pending = [];
    this.drag = null;
    this.helpBox.hidden = true;
    this.selectCell(0, false);
    this.say('');
  },
  undo() { if (!this.readOnly && this.complete) this.queue.push({ action: 'undo' }); },
  redo() { if (!this.readOnly && this.complete) this.queue.push({ action: 'redo' }); },
  toggleGray() { this.channels.gray = !this.channels.gray; this.channels.changed(); },
  nextChannel() { this.channels.step(1); },
  previousChannel() { this.channels.step(-1); },
  toggleInvert() { this.channels.invert = !this.channels.invert; this.channels.changed(); },
  resetView() { this.view.fit(); this.requestDraw(); },
  nextLayer() { this.setLayer((this.display.layer + 1) % this.info.layers.length); },
  previousLayer() { this.setLayer((this.display.layer + this.info.layers.length - 1) % this.info.layers.length); },
  cycleFill() {
    const i = FILL_STEPS.findIndex((v) => Math.abs(v - this.display.fill) < 1e-6);
    this.display.fill = FILL_STEPS[(i + 1) % FILL_STEPS.length];
    this.fillSlider.value = this.display.fill;
    this.requestDraw();
  },
  cycleOutline() {
    const i = OUTLINE_STEPS.findIndex((v) => Math.abs(v - this.display.outline) < 1e-6);
    this.display.outline = OUTLINE_STEPS[(i + 1) % OUTLINE_STEPS.length];
    this.outlineSlider.value = this.display.outline;
    this.requestDraw();
  },
  toggleHighlight() { this.display.highlight = !this.display.highlight; this.highlightBox.checked = this.display.highlight; this.requestDraw(); },
  previousCell() { this.stepCell(-1); },
  nextCell() { this.stepCell(1); },
  zoomIn() { this.zoomKey(1.25); },
  zoomOut() { this.zoomKey(0.8); },
  help() { this.helpBox.hidden = !this.helpBox.hidden; },
};

Editor.prototype.zoomKey = function zoomKey(factor) {
  const [cx, cy] = this.pointer || [this.view.canvasWidth / 2, this.view.canvasHeight / 2];
  this.view.zoomAt(cx, cy, factor);
  this.requestDraw();
};

