// The cell list of the sidebar, drawn as a window: only the rows scrolled into view exist in the page, between
// two spacers as tall as the rows above and below. An 8192² task lists 64,000 cells; as 64,000 rows in the page,
// every mouse move's hit test, layout and paint walked them all (100-300 ms a frame), while the editor waited.
import { el } from './panels.js';

const EXTRA = 8; // rows drawn beyond each edge of the view, so a small scroll shows no gap

export class CellList {
  // ul: the scrolling list; count: where "(n)" goes; pick(id): a row was clicked
  constructor(ul, count, pick) {
    this.ul = ul;
    this.count = count;
    this.ids = [];         // every cell id of the layer shown, ascending
    this.stats = new Map(); // id -> {area, ...}: the labels' own statistics (read when a row is drawn)
    this.selected = 0;
    this.rowHeight = 0;
    this.window = null;
    this.top = el('li', { className: 'spacer' });
    this.bottom = el('li', { className: 'spacer' });
    this.top.setAttribute('aria-hidden', 'true');
    this.bottom.setAttribute('aria-hidden', 'true');
    ul.addEventListener('scroll', () => this.schedule());
    ul.onclick = (ev) => {
      const li = ev.target.closest('li');
      if (li && li.dataset.id) pick(Number(li.dataset.id));
    };
  }

  // the whole list again: ids ascending, stats the labels' Map for this layer
  set(ids, stats) {
    this.ids = ids;
    this.stats = stats;
    this.render();
  }

  // cells whose statistics changed (a patch): rows come, go or show their new area
  update(changed) {
    for (const id of changed) {
      const at = this.indexOf(id);
      const present = at < this.ids.length && this.ids[at] === id;
      if (this.stats.has(id) && !present) this.ids.splice(at, 0, id);
      else if (!this.stats.has(id) && present) this.ids.splice(at, 1);
    }
    this.render();
  }

  // the first index whose id is >= id (bisection)
  indexOf(id) {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ids[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // reveal: scroll the selected row into view (a jump to the cell)
  select(id, reveal = false) {
    this.selected = id || 0;
    if (reveal && this.selected) {
      const at = this.indexOf(this.selected);
      if (this.ids[at] === this.selected && this.rowHeight) {
        const y = at * this.rowHeight;
        const view = this.ul.clientHeight;
        if (y < this.ul.scrollTop) this.ul.scrollTop = y;
        else if (y + this.rowHeight > this.ul.scrollTop + view) this.ul.scrollTop = y + this.rowHeight - view;
      }
    }
    this.render();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  row(id) {
    const s = this.stats.get(id);
    const li = el('li', { className: id === this.selected ? 'selected' : '' }, `${id}`, el('span', {}, `${s ? s.area : 0} px`));
    li.dataset.id = id;
    return li;
  }

  render() {
    this.count.textContent = `(${this.ids.length})`;
    if (!this.rowHeight && this.ids.length) {
      // one row's height, measured once (the font decides it)
      const probe = this.row(this.ids[0]);
      this.ul.replaceChildren(probe);
      this.rowHeight = probe.getBoundingClientRect().height || 18;
    }
    const h = this.rowHeight || 18;
    const first = Math.max(0, Math.floor(this.ul.scrollTop / h) - EXTRA);
    const last = Math.min(this.ids.length, first + Math.ceil((this.ul.clientHeight || 400) / h) + 2 * EXTRA);
    this.top.style.height = `${first * h}px`;
    this.bottom.style.height = `${(this.ids.length - last) * h}px`;
    const rows = [];
    for (let i = first; i < last; i++) rows.push(this.row(this.ids[i]));
    this.ul.replaceChildren(this.top, ...rows, this.bottom);
  }

  // the rows in the page now (tests)
  shownIds() { return [...this.ul.querySelectorAll('li[data-id]')].map((li) => Number(li.dataset.id)); }
}
