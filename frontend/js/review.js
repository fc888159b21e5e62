// Reviewer landing page: log in, then list the tasks waiting for review.
let csrf = null;
const status = document.getElementById('status');

async function call(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf || '' } });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

async function showQueue() {
  const { tasks } = await call('/api/review/tasks');
  const list = document.getElementById('tasks');
  list.replaceChildren(...tasks.map((t) => {
    const li = document.createElement('li');
    li.textContent = `task ${t.id} (${t.project}) · ${t.state} · revision ${t.revision} · open ${Math.round(t.time_open_s)} s`;
    return li;
  }));
  document.getElementById('queue').hidden = false;
  document.getElementById('login').hidden = true;
  if (!tasks.length) status.textContent = 'Nothing waiting for review.';
}

document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    const me = await call('/api/auth/login', { method: 'POST', body: JSON.stringify(Object.fromEntries(form)) });
    csrf = me.csrf_token;
    await showQueue();
  } catch (err) { status.textContent = err.message; }
});

call('/api/auth/me').then(async (me) => { csrf = me.csrf_token; if (me.user) await showQueue(); });
