// The reviewer's page: log in, a queue (filter by state and project, sort by time open or revisions), open a
// task in the same editor the annotator used, edit, approve or reject with a comment, next task with one key.
import { ApiError, Client } from './api.js';
import { Editor } from './editor.js';
import { QCPanel } from './qc.js';

const $ = (id) => document.getElementById(id);
const state = { csrf: null, tasks: [], sort: 'submitted_at', descending: false, current: null, editor: null };

function show(text, kind = 'info') {
  $('banner').textContent = text;
  $('banner').dataset.kind = kind;
  $('banner').hidden = !text;
}

async function call(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf || '' } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function page(name) {
  for (const id of ['login-page', 'queue-page', 'editor']) $(id).hidden = id !== name;
  $('review-bar').hidden = name !== 'editor';
  document.body.dataset.page = name;
}

function sorted(tasks) {
  const key = state.sort;
  const sign = state.descending ? -1 : 1;
  return [...tasks].sort((a, b) => sign * ((a[key] ?? '') < (b[key] ?? '') ? -1 : (a[key] ?? '') > (b[key] ?? '') ? 1 : a.id - b.id));
}

async function loadQueue() {
  const params = new URLSearchParams();
  for (const s of $('state-filter').value.split(',')) params.append('state', s);
  if ($('project-filter').value) params.set('project', $('project-filter').value);
  if ($('kind-filter').value) params.set('kind', $('kind-filter').value);
  const { tasks, projects, counts } = await call(`/api/review/tasks?${params}`);
  $('kind-counts').textContent = counts ? `${counts.crop} crop reviews · ${counts.qc} image QC` : '';
  state.tasks = sorted(tasks);
  const select = $('project-filter');
  const chosen = select.value;
  select.replaceChildren(new Option('all', ''), ...projects.map((p) => new Option(p, p)));
  select.value = chosen;
  $('tasks').replaceChildren(...state.tasks.map((t) => {
    const tr = document.createElement('tr');
    tr.className = 'task';
    tr.dataset.id = t.id;
    const minutes = t.time_open_s ? `${Math.round(t.time_open_s / 6) / 10} min` : '—';
    tr.dataset.kind = t.kind || 'crop';
    const kind = t.kind === 'qc' ? `image QC · ${t.image || ''}` : 'crop';
    for (const v of [t.id, t.project, kind, t.state.replace('_', ' '), t.revision, minutes, t.submitted_at ? t.submitted_at.slice(0, 16).replace('T', ' ') : '—']) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.append(td);
    }
    // how likely the labels are wrong (replicas disagree, low-scoring worker, hard crop): sort by it to review those first
    const risk = document.createElement('td');
    risk.textContent = t.risk === undefined ? '—' : t.risk.toFixed(2);
    risk.title = (t.why || []).join(', ');
    tr.append(risk);
    tr.addEventListener('click', () => openTask(t.id));
    return tr;
  }));
  $('empty').hidden = state.tasks.length > 0;
}

async function showQueue() {
  if (state.editor) { state.editor.destroy(); state.editor = null; }
  state.current = null;
  $('title').textContent = '';
  page('queue-page');
  await loadQueue();
}

async function openTask(id, notice = '') {
  if (state.editor) { state.editor.destroy(); state.editor = null; }
  state.qc = null;
  const client = new Client(`/api/review/tasks/${id}`, { csrf: state.csrf });
  let info = await client.info();
  if (info.state === 'submitted') info = await client.post('start');
  state.current = info;
  const what = info.kind === 'qc' ? 'image QC' : 'task';
  $('title').textContent = `· ${what} ${info.id} · ${info.project} · ${info.state.replace('_', ' ')}`;
  $('comment').value = '';
  const reviewable = info.state === 'in_review';
  for (const b of ['approve', 'reject']) $(b).disabled = !reviewable;
  const last = info.review && info.review.comment ? `Last review (${info.review.verdict}): “${info.review.comment}”` : '';
  show([notice, last].filter(Boolean).join(' · '), notice ? 'done' : 'info');
  page('editor');
  delete document.body.dataset.ready;
  delete document.body.dataset.firstView;
  delete document.body.dataset.qcShown;
  const editor = new Editor($('editor'), client, info, { readOnly: !reviewable });
  state.editor = editor;
  window.cellloop = { editor, client };
  // a big image (a whole-image QC task) shows its coarse view first: its conflicts list comes with that view, not
  // after every full-resolution chunk
  const loading = editor.load();
  await Promise.race([editor.firstView, loading]);
  if (info.kind === 'qc' && state.editor === editor) {
    state.qc = new QCPanel(editor, client, state.csrf);
    window.cellloop.qc = state.qc;
    await state.qc.mount();
    document.body.dataset.qcShown = 'true';
  }
  await loading;
  if (state.editor !== editor) return; // the reviewer went on to another task meanwhile
  document.body.dataset.ready = 'true';
}

async function verdict(kind) {
  const comment = $('comment').value.trim();
  if (kind === 'reject' && !comment) { show('Write a comment for the annotator before rejecting.', 'error'); $('comment').focus(); return; }
  const { editor, current } = state;
  try {
    await editor.idle();
    await call(`/api/review/tasks/${current.id}/${kind}`, { method: 'POST', body: JSON.stringify({ comment }) });
    const notice = `Task ${current.id} ${kind === 'approve' ? 'approved' : 'sent back to the annotator'}.`;
    show(notice, 'done');
    await nextTask(notice);
  } catch (err) { show(`Not saved: ${err.message}`, 'error'); }
}

async function nextTask(notice = '') {
  const after = state.current ? state.current.id : 0;
  await loadQueue();
  const next = state.tasks.find((t) => t.id !== after && ['submitted', 'in_review'].includes(t.state));
  if (next) await openTask(next.id, notice);
  else await showQueue();
}

$('approve').addEventListener('click', () => verdict('approve'));
$('reject').addEventListener('click', () => verdict('reject'));
$('next').addEventListener('click', () => nextTask());
$('back').addEventListener('click', () => showQueue());
$('state-filter').addEventListener('change', () => loadQueue());
$('project-filter').addEventListener('change', () => loadQueue());
$('kind-filter').addEventListener('change', () => loadQueue());
for (const b of document.querySelectorAll('[data-sort]')) {
  b.addEventListener('click', async () => {
    state.descending = state.sort === b.dataset.sort ? !state.descending : b.dataset.sort !== 'id' && b.dataset.sort !== 'submitted_at';
    state.sort = b.dataset.sort;
    await loadQueue();
  });
}
document.addEventListener('keydown', (ev) => {
  const field = ev.target instanceof HTMLElement && ['INPUT', 'TEXTAREA', 'SELECT'].includes(ev.target.tagName);
  if (!field && !ev.ctrlKey && !ev.metaKey && ev.key.toLowerCase() === 'j' && state.current) { ev.preventDefault(); nextTask(); }
});

$('logout').addEventListener('click', async () => {
  await call('/api/auth/logout', { method: 'POST', body: '{}' }).catch(() => null);
  location.reload();
});

function signedIn(user) {
  $('who').textContent = user.username;
  $('logout').hidden = false;
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const me = await call('/api/auth/login', { method: 'POST', body: JSON.stringify(Object.fromEntries(new FormData(ev.target))) });
    state.csrf = me.csrf_token;
    signedIn(me.user);
    show('');
    await showQueue();
  } catch (err) { show(err.message, 'error'); }
});

call('/api/auth/me').then(async (me) => {
  state.csrf = me.csrf_token;
  if (!me.user) { page('login-page'); return; }
  signedIn(me.user);
  await showQueue();
}).catch((err) => show(`Could not reach the server: ${err.message}`, 'error'));
