// The crowd task page: the token in the URL is the only credential (no cookie), so it works inside a crowd
// platform's iframe. Loads the editor, and on submit tells the parent page, at its configured origin only.
import { ApiError, Client } from './api.js';
import { Editor } from './editor.js';

const EDITABLE = new Set(['new', 'prelabeled', 'assigned', 'rejected']);
const token = decodeURIComponent(location.pathname.split('/').pop());
const query = new URLSearchParams(location.search);
const worker = query.get('worker');
// ?renderer=canvas2d forces the CPU path (bench/editor.py compares the two)
const renderer = ['webgl2', 'canvas2d'].includes(query.get('renderer')) ? query.get('renderer') : 'auto';
const client = new Client(`/api/task/${encodeURIComponent(token)}`, { query: worker ? `?worker=${encodeURIComponent(worker)}` : '' });
const title = document.getElementById('title');
const banner = document.getElementById('banner');
const submit = document.getElementById('submit');
const confirmBox = document.getElementById('confirm');
let editor = null;
let info = null;
let parentOrigin = location.origin; // the crowd platform's origin, as the server is configured

function show(text, kind = 'info') {
  banner.textContent = text;
  banner.dataset.kind = kind;
  banner.hidden = !text;
}

function showState() {
  title.textContent = `task ${info.id} · ${info.project} · ${info.state}`;
  submit.disabled = !EDITABLE.has(info.state);
}

// the page that frames us, told where it expects it: never '*' (the message names the task)
function tellParent() {
  if (window.parent === window) return;
  window.parent.postMessage({ type: 'cellloop:submitted', task: info.id, revision: info.revision }, parentOrigin);
}

submit.addEventListener('click', () => confirmBox.showModal());
confirmBox.addEventListener('close', async () => {
  if (confirmBox.returnValue !== 'submit') return;
  submit.disabled = true;
  try {
    await editor.idle();
    info = await client.submit(editor.labels.revision);
    editor.setReadOnly(true);
    showState();
    show(`Submitted (revision ${info.revision}). Thank you!`, 'done');
    tellParent();
  } catch (err) {
    submit.disabled = false;
    show(`Not submitted: ${err.message}`, 'error');
  }
});

async function main() {
  // the arrays are the big part of opening a task: a small task's come whole, as soon as the task JSON says it is
  // small; a big one's (info.chunks) come in chunks, the view's first (editor.loadChunked)
  const infoReply = client.info();
  const arrays = infoReply.then((i) => (i.chunks ? null : Promise.all([client.image(), client.labels()])));
  arrays.then(() => performance.mark('cellloop-arrays'), () => null); // a bad link fails info() below
  info = await infoReply;
  // POST open assigns the task and starts its clock; it answers the task JSON with the parent origin. Assigning
  // keeps an editable task editable, so the editor starts loading meanwhile (a big task's first chunks)
  const opening = client.open();
  if (info.parent_origin) parentOrigin = info.parent_origin;
  showState();
  const readOnly = !EDITABLE.has(info.state);
  const pin = info.review && info.review.verdict === 'rejected' && EDITABLE.has(info.state) ? info.review.pin : null;
  if (info.review && info.review.verdict === 'rejected' && EDITABLE.has(info.state)) {
    const where = !pin ? '' : pin.cell ? ` (cell ${pin.cell}, selected)` : ` (at row ${pin.point[0]}, column ${pin.point[1]})`;
    show(`The reviewer sent this task back${where}: “${info.review.comment}”`, 'review');
  } else if (readOnly) {
    show(`This task is ${info.state.replace('_', ' ')}: it can be viewed but no longer changed. Thank you!`, 'done');
  }
  editor = new Editor(document.getElementById('editor'), client, info, { readOnly, renderer });
  window.cellloop = { editor, client };
  const loading = editor.load(arrays);
  const opened = await opening;
  if (opened && opened.state) {
    info = { ...info, ...opened };
    if (info.parent_origin) parentOrigin = info.parent_origin;
    showState();
  }
  await loading;
  // a comment pinned to a cell selects it and brings it into view; one pinned to a point centres the view there
  if (pin && pin.cell) {
    editor.setLayer(pin.layer || 0);
    editor.selectCell(pin.cell, true);
  } else if (pin && pin.point) {
    editor.view.centerOn(pin.point[0], pin.point[1]);
  }
  performance.mark('cellloop-ready');
  document.body.dataset.ready = 'true';
}

main().catch((err) => {
  show(err instanceof ApiError ? `Could not open this task: ${err.message}` : `Could not open this task: ${err}`, 'error');
  title.textContent = '';
});
