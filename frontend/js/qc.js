// The expert's whole-image QC, on top of the shared editor: a panel listing the conflicts stitch found (kind,
// cells, place; a click zooms there; each can be marked resolved, and the counts follow), a toggle that draws
// the crop seams, and markers for the conflicts on the editor's overlay. Editing, undo/redo and the verdict are
// the editor's and the review page's own.
import { el } from './panels.js';

const ZOOM = 4; // canvas pixels per image pixel when jumping to a conflict

export class QCPanel {
  constructor(editor, client, csrf) {
    this.editor = editor;
    this.client = client;
    this.csrf = csrf;
    this.data = null;
    this.showSeams = false;
    this.current = null;
  }

  async call(path, options = {}) {
    const resp = await fetch(`${this.client.base}${path}`, {
      ...options, headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': this.csrf || '' },
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
    return body;
  }

  async mount() {
    this.data = await this.call('/qc');
    this.counts = el('span', { id: 'qc-counts' });
    this.list = el('ul', { id: 'qc-conflicts', className: 'cells qc-conflicts' });
    this.seamBox = el('input', { type: 'checkbox', id: 'qc-seams', title: 'draw the crop seams' });
    this.seamBox.addEventListener('change', () => { this.showSeams = this.seamBox.checked; this.editor.drawOverlay(); });
    // a QC task made before QC tasks were stored in chunks loads whole
    const note = this.data.large && !this.editor.info.chunks
      ? el('p', { className: 'qc-note' }, `This image is ${this.data.shape.join('×')} px, larger than 4096², and its QC task was made before QC tasks were stored in chunks: the whole image is loaded at once, so expect a slow start.`)
      : '';
    this.section = el('section', { className: 'qc-box', id: 'qc-panel' },
      el('h3', {}, 'Conflicts ', this.counts),
      el('label', { className: 'row' }, el('span', {}, 'crop seams'), this.seamBox),
      note, this.list);
    this.editor.container.querySelector('.sidebar').prepend(this.section);
    this.editor.overlayHooks.push((ctx, view) => this.draw(ctx, view));
    this.render();
    this.editor.drawOverlay();
  }

  render() {
    const { counts, conflicts } = this.data;
    const kinds = Object.entries(counts.open_by_kind).map(([k, n]) => `${n} ${k}`).join(', ');
    this.counts.textContent = `${counts.open} open · ${counts.resolved} resolved${kinds ? ` (${kinds})` : ''}`;
    this.counts.dataset.open = counts.open;
    this.list.replaceChildren(...conflicts.map((c) => {
      const box = el('input', { type: 'checkbox', checked: c.resolved, title: 'resolved' });
      box.addEventListener('click', (ev) => ev.stopPropagation());
      box.addEventListener('change', () => this.resolve(c.id, box.checked));
      const li = el('li', { className: `conflict${c.resolved ? ' resolved' : ''}${this.current === c.id ? ' selected' : ''}` },
        el('span', {}, `${c.kind} · cells ${(c.cells || []).join(', ')}`), el('span', {}, `(${c.y}, ${c.x})`), box);
      li.dataset.id = c.id;
      li.addEventListener('click', () => this.goTo(c));
      return li;
    }));
    if (!conflicts.length) this.list.append(el('li', { className: 'empty' }, 'stitch listed no conflicts'));
  }

  goTo(c) {
    const { view } = this.editor;
    view.scale = Math.max(view.scale, ZOOM);
    view.centerOn(c.y + 0.5, c.x + 0.5);
    this.current = c.id;
    this.render();
    this.editor.say(`Conflict ${c.id}: ${c.kind} of cells ${(c.cells || []).join(', ')} at row ${c.y}, column ${c.x}.`);
    this.editor.requestDraw();
  }

  async resolve(id, resolved) {
    try {
      this.data = await this.call(`/qc/conflicts/${id}`, { method: 'POST', body: JSON.stringify({ resolved }) });
    } catch (err) {
      this.editor.say(`Not saved: ${err.message}`, 'error');
    }
    this.render();
    this.editor.drawOverlay();
  }

  draw(ctx, view) {
    if (!this.data) return;
    const dpr = window.devicePixelRatio || 1;
    if (this.showSeams) {
      ctx.strokeStyle = '#0ff';
      ctx.setLineDash([8, 4]);
      for (const [y0, x0, y1, x1] of this.data.seams) {
        const [cx0, cy0] = view.toCanvas(y0, x0);
        const [cx1, cy1] = view.toCanvas(y1, x1);
        ctx.strokeRect(cx0, cy0, cx1 - cx0, cy1 - cy0);
      }
      ctx.setLineDash([]);
    }
    for (const c of this.data.conflicts) {
      const [x, y] = view.toCanvas(c.y + 0.5, c.x + 0.5);
      ctx.strokeStyle = c.resolved ? '#4c4' : '#f90';
      ctx.lineWidth = (c.id === this.current ? 3 : 1.5) * dpr;
      ctx.beginPath();
      ctx.arc(x, y, 10 * dpr, 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.lineWidth = Math.max(1, dpr);
  }
}
