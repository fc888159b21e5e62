// A minimal task page: shows one channel with the label outlines and offers brush, eraser, undo/redo and
// submit. The full editor (every tool, multichannel display, shortcuts) builds on the same client.
import { ApiError, Client } from './api.js';

const token = decodeURIComponent(location.pathname.split('/').pop());
const client = new Client(`/api/task/${encodeURIComponent(token)}`);
const state = { info: null, image: null, labels: null, revision: 0, channel: 0, layer: 0, tool: 'paint', label: 1, radius: 2 };
const canvas = document.getElementById('canvas');
const ctx = canvas.getContext('2d');
const status = document.getElementById('status');

function say(text) { status.textContent = text; }

function draw() {
  const [h, w] = state.info.shape;
  const c = state.info.channels.length;
  const img = ctx.createImageData(w, h);
  let lo = Infinity; let hi = -Infinity;
  for (let i = 0; i < h * w; i++) { const v = state.image.data[i * c + state.channel]; lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  const lab = state.labels.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const g = (state.image.data[i * c + state.channel] - lo) * scale;
      const id = lab[i * 2 + state.layer];
      const edge = id && ((x > 0 && lab[(i - 1) * 2 + state.layer] !== id) || (y > 0 && lab[(i - w) * 2 + state.layer] !== id)
        || (x < w - 1 && lab[(i + 1) * 2 + state.layer] !== id) || (y < h - 1 && lab[(i + w) * 2 + state.layer] !== id));
      img.data.set(edge ? [255, 64, 64, 255] : [g, g, g, 255], i * 4);
    }
  }
  ctx.putImageData(img, 0, 0);
  say(`task ${state.info.id} · ${state.info.state} · revision ${state.revision} · channel ${state.info.channels[state.channel]} · ${state.tool} label ${state.label}`);
}

function applyPatch({ layer, box, after }) {
  const [y0, x0, y1, x1] = box;
  const w = state.info.shape[1];
  let k = 0;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) state.labels.data[(y * w + x) * 2 + layer] = after[k++];
}

async function change(promise) {
  try {
    const { patch, revision } = await promise;
    applyPatch(patch);
    state.revision = revision;
    draw();
  } catch (err) {
    say(err instanceof ApiError ? `refused: ${err.message}` : String(err));
    if (err instanceof ApiError && err.status === 409) await load();
  }
}

function point(ev) {
  const r = canvas.getBoundingClientRect();
  return [Math.floor((ev.clientY - r.top) * canvas.height / r.height), Math.floor((ev.clientX - r.left) * canvas.width / r.width)];
}

canvas.addEventListener('click', (ev) => {
  const p = point(ev);
  const params = { layer: state.layer, points: [p], radius: state.radius };
  if (state.tool === 'paint') params.label = state.label;
  change(client.edit(state.revision, state.tool, params));
});

document.addEventListener('keydown', (ev) => {
  if (ev.ctrlKey && ev.key.toLowerCase() === 'z') { change(ev.shiftKey ? client.redo(state.revision) : client.undo(state.revision)); ev.preventDefault(); return; }
  if (ev.key === 'b') state.tool = 'paint';
  else if (ev.key === 'e') state.tool = 'erase';
  else if (ev.key === 'c') state.channel = (state.channel + 1) % state.info.channels.length;
  else if (ev.key === 'f') state.layer = 1 - state.layer;
  else return;
  draw();
});

document.getElementById('submit').addEventListener('click', async () => {
  try {
    state.info = await client.submit(state.revision);
    window.parent.postMessage({ type: 'cellloop:submitted', task: state.info.id, revision: state.revision }, '*');
    say(`submitted revision ${state.revision}. Thank you!`);
  } catch (err) { say(`refused: ${err.message}`); }
});

async function load() {
  state.info = await client.info();
  [state.image, state.labels] = await Promise.all([client.image(), client.labels()]);
  state.revision = state.labels.revision;
  const maxId = state.labels.data.reduce((m, v) => Math.max(m, v), 0);
  state.label = maxId + 1;
  [canvas.height, canvas.width] = state.info.shape;
  draw();
}

load().catch((err) => say(`could not load the task: ${err.message}`));
