// Channel display: per channel on/off, colour and display range (a histogram with min/max sliders, auto
// range from percentiles), one active channel (the one C / Shift+C step through, grayscale mode shows and
// the image tools read), invert. Values stay in the data's own units (16-bit stays 16-bit); only the range
// turns them into brightness, on the GPU. Settings persist per project in localStorage.
import { CHANNEL_COLORS, hexToRgb } from './palette.js';

// the nuclear and membrane channels by role, whatever their place in the panel
const ROLE_COLORS = { nuclear: '#00ff00', membrane: '#ff0000' };

const HIST_BINS = 128;
const SAMPLE = 1 << 18; // pixels sampled per channel for histograms and percentiles
export const AUTO_PERCENTILES = [1, 99.5];

// (H, W, C) interleaved array -> one plane per channel: 8- and 16-bit data keep their type (the GPU takes
// them as integer textures), everything else becomes float32
export function splitChannels(data, height, width, count) {
  const n = height * width;
  const Type = data instanceof Uint16Array || data instanceof Uint8Array ? data.constructor : Float32Array;
  const planes = [];
  for (let c = 0; c < count; c++) planes.push(new Type(n));
  for (let i = 0, k = 0; i < n; i++) for (let c = 0; c < count; c++) planes[c][i] = data[k++];
  return planes;
}

export function channelStats(plane) {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < plane.length; i++) {
    const v = plane[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  const hist = new Uint32Array(HIST_BINS);
  const span = hi > lo ? hi - lo : 1;
  const step = Math.max(1, Math.floor(plane.length / SAMPLE));
  for (let i = 0; i < plane.length; i += step) {
    hist[Math.min(HIST_BINS - 1, Math.floor((plane[i] - lo) / span * HIST_BINS))]++;
  }
  return { lo, hi, hist };
}

export function percentile(stats, p) {
  const total = stats.hist.reduce((a, b) => a + b, 0);
  const target = total * p / 100;
  let seen = 0;
  for (let b = 0; b < HIST_BINS; b++) {
    seen += stats.hist[b];
    if (seen >= target) return stats.lo + (stats.hi - stats.lo) * (b + 1) / HIST_BINS;
  }
  return stats.hi;
}

// a channel whose values have not arrived yet (a big task fetches the shown channels first): no range to show
function noStats() {
  return { lo: 0, hi: 1, hist: new Uint32Array(HIST_BINS) };
}

export class Channels {
  // roles: {nuclear, membrane} channel indices (those that feed the model), coloured the same in every project.
  // planes: one per channel, or missing (undefined/null) for a channel still on its way: its range comes from
  // its values when they arrive (arrived), unless this project's saved settings give one
  constructor(names, planes, project, roles = {}) {
    this.storageKey = `cellloop.view.${project}`;
    this.gray = false;
    this.invert = false;
    this.active = 0;
    this.listeners = [];
    const byRole = { [roles.nuclear]: ROLE_COLORS.nuclear, [roles.membrane]: ROLE_COLORS.membrane };
    const rest = CHANNEL_COLORS.filter((c) => !Object.values(ROLE_COLORS).includes(c));
    let next = 0;
    const hasRoles = roles.nuclear !== undefined;
    this.channels = names.map((name, index) => {
      const loaded = Boolean(planes[index]);
      const stats = loaded ? channelStats(planes[index]) : noStats();
      const auto = AUTO_PERCENTILES.map((p) => percentile(stats, p));
      const role = index in byRole && byRole[index];
      const color = !hasRoles ? CHANNEL_COLORS[index % CHANNEL_COLORS.length] : role || rest[next++ % rest.length];
      // the model's channels show from the start, wherever they sit in a large panel
      const on = hasRoles ? Boolean(role) || (index < 3 && names.length <= 3) : index < 3;
      return { name, index, on, color, min: auto[0], max: Math.max(auto[1], auto[0] + 1e-6), stats, loaded, savedRange: false };
    });
    this.load();
  }

  // indices of the channels the display shows now (grayscale: the active one; colour: those switched on)
  shownIndices() {
    return this.shown().map((c) => c.index).sort((a, b) => a - b);
  }

  // indices of the channels whose values have not arrived yet
  missing() {
    return this.channels.filter((c) => !c.loaded).map((c) => c.index);
  }

  // the values of channels `indices` have arrived (planes[i] for channel i): their histograms, and their auto
  // range unless the saved settings gave one
  arrived(indices, planes) {
    for (const i of indices) {
      const ch = this.channels[i];
      ch.stats = channelStats(planes[i]);
      ch.loaded = true;
      if (!ch.savedRange) this.autoRange(i);
    }
    if (this.container) this.render();
    for (const fn of this.listeners) fn();
  }

  onChange(fn) { this.listeners.push(fn); }

  changed() {
    this.save();
    for (const fn of this.listeners) fn();
  }

  autoRange(index) {
    const ch = this.channels[index];
    [ch.min, ch.max] = AUTO_PERCENTILES.map((p) => percentile(ch.stats, p));
    if (ch.max <= ch.min) ch.max = ch.min + 1e-6;
  }

  step(delta) {
    const n = this.channels.length;
    this.active = ((this.active + delta) % n + n) % n;
    this.changed();
  }

  // what the renderers draw: [{index, rgb, min, max}]
  shown() {
    if (this.gray) {
      const ch = this.channels[this.active];
      return [{ index: ch.index, rgb: [1, 1, 1], min: ch.min, max: ch.max }];
    }
    return this.channels.filter((c) => c.on).map((c) => ({ index: c.index, rgb: hexToRgb(c.color), min: c.min, max: c.max }));
  }

  save() {
    try {
      // a channel still on its way has no range of its own yet: keep only a saved one
      const range = (c) => (c.loaded || c.savedRange ? { min: c.min, max: c.max } : {});
      const channels = Object.fromEntries(this.channels.map((c) => [c.name, { on: c.on, color: c.color, ...range(c) }]));
      localStorage.setItem(this.storageKey, JSON.stringify({ channels, gray: this.gray, invert: this.invert, active: this.active }));
    } catch (err) { /* storage full or disabled: settings just do not persist */ }
  }

  load() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(this.storageKey) || 'null'); } catch (err) { saved = null; }
    if (!saved || typeof saved !== 'object') return;
    for (const ch of this.channels) {
      const s = saved.channels && saved.channels[ch.name];
      if (!s) continue;
      if (typeof s.on === 'boolean') ch.on = s.on;
      if (/^#[0-9a-f]{6}$/i.test(s.color)) ch.color = s.color;
      if (Number.isFinite(s.min) && Number.isFinite(s.max) && s.max > s.min) { ch.min = s.min; ch.max = s.max; ch.savedRange = true; }
    }
    this.gray = saved.gray === true;
    this.invert = saved.invert === true;
    if (Number.isInteger(saved.active) && saved.active >= 0 && saved.active < this.channels.length) this.active = saved.active;
  }

  // the channel list: one row per channel, scrolling when there are many
  mount(container) {
    this.container = container;
    this.render();
  }

  render() {
    const rows = this.channels.map((ch) => this.row(ch));
    this.container.replaceChildren(...rows);
  }

  row(ch) {
    const row = document.createElement('div');
    row.className = 'channel' + (ch.index === this.active ? ' active' : '');
    row.dataset.channel = ch.index;
    const on = document.createElement('input');
    on.type = 'checkbox';
    on.checked = ch.on;
    on.title = 'show this channel';
    on.addEventListener('change', () => { ch.on = on.checked; this.changed(); });
    const name = document.createElement('button');
    name.className = 'channel-name';
    name.textContent = ch.name;
    name.title = 'make this the active channel';
    name.addEventListener('click', () => { this.active = ch.index; this.changed(); this.render(); });
    const color = document.createElement('input');
    color.type = 'color';
    color.value = ch.color;
    color.addEventListener('input', () => { ch.color = color.value; this.changed(); });
    const hist = document.createElement('canvas');
    hist.className = 'histogram';
    hist.width = 128;
    hist.height = 28;
    const range = document.createElement('div');
    range.className = 'range';
    const sliders = ['min', 'max'].map((which) => {
      const s = document.createElement('input');
      s.type = 'range';
      s.min = ch.stats.lo;
      s.max = ch.stats.hi;
      s.step = (ch.stats.hi - ch.stats.lo) / 1000 || 1;
      s.value = ch[which];
      s.title = `display ${which}`;
      s.className = which;
      s.addEventListener('input', () => {
        const v = Number(s.value);
        if (which === 'min') ch.min = Math.min(v, ch.max - Number(s.step));
        else ch.max = Math.max(v, ch.min + Number(s.step));
        this.drawHistogram(hist, ch);
        this.changed();
      });
      return s;
    });
    const auto = document.createElement('button');
    auto.textContent = 'auto';
    auto.title = `range from the ${AUTO_PERCENTILES[0]}th to the ${AUTO_PERCENTILES[1]}th percentile`;
    auto.addEventListener('click', () => {
      this.autoRange(ch.index);
      sliders[0].value = ch.min;
      sliders[1].value = ch.max;
      this.drawHistogram(hist, ch);
      this.changed();
    });
    range.append(hist, ...sliders);
    const head = document.createElement('div');
    head.className = 'channel-head';
    head.append(on, color, name, auto);
    row.append(head, range);
    this.drawHistogram(hist, ch);
    return row;
  }

  drawHistogram(canvas, ch) {
    const ctx = canvas.getContext('2d');
    const { hist, lo, hi } = ch.stats;
    const peak = Math.max(1, ...hist.slice(1)); // bin 0 is mostly empty background: do not let it flatten the rest
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = ch.color;
    ctx.globalAlpha = 0.25;
    const span = hi - lo || 1;
    ctx.fillRect((ch.min - lo) / span * canvas.width, 0, (ch.max - ch.min) / span * canvas.width, canvas.height);
    ctx.globalAlpha = 0.9;
    for (let b = 0; b < hist.length; b++) {
      const h = Math.min(1, hist[b] / peak) * canvas.height;
      ctx.fillRect(b, canvas.height - h, 1, h);
    }
    ctx.globalAlpha = 1;
  }
}
