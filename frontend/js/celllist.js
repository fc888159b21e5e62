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
    this.rows = new Map(); // id -> li of the rows in the page
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

  // cells whose statistics changed (a patch): rows come, go or show their new area (a stroke on one cell
  // rewrites one row's text, not the window)
  update(changed) {
    let moved = false;
    for (const id of changed) {
      const at = this.indexOf(id);
      const present = at < this.ids.length && this.ids[at] === id;
      if (this.stats.has(id) && !present) this.ids.splice(at, 0, id);
      else if (!this.stats.has(id) && present) this.ids.splice(at, 1);
      else continue;
      moved = true;
    }
    if (moved) {
      this.render();
      return;
    }
    for (const id of changed) {
      const li = this.rows.get(id);
      if (li) li.lastChild.textContent = this.areaText(id);
    }
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
    const old = this.rows.get(this.selected);
    if (old) old.classList.remove('selected');
    this.selected = id || 0;
    const li = this.rows.get(this.selected);
    if (li) li.classList.add('selected');
    if (reveal && this.selected) {
      const at = this.indexOf(this.selected);
      if (this.ids[at] === this.selected && this.rowHeight) {
        const y = at * this.rowHeight;
        const view = this.ul.clientHeight;
        const top = this.ul.scrollTop;
        if (y < top) this.ul.scrollTop = y;
        else if (y + this.rowHeight > top + view) this.ul.scrollTop = y + this.rowHeight - view;
        if (this.ul.scrollTop !== top) this.render();
      }
    }
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  areaText(id) {
    const s = this.stats.get(id);
    return `${s ? s.area : 0} px`;
  }

  row(id) {
    const li = el('li', { className: id === this.selected ? 'selected' : '' }, `${id}`, el('span', {}, this.areaText(id)));
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
    this.rows = new Map();
    for (let i = first; i < last; i++) this.rows.set(this.ids[i], this.row(this.ids[i]));
    this.ul.replaceChildren(this.top, ...this.rows.values(), this.bottom);
  }

  // the rows in the page now (tests)
  shownIds() { return [...this.ul.querySelectorAll('li[data-id]')].map((li) => Number(li.dataset.id)); }
}
