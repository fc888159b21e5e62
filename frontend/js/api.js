// API client: JSON calls and the two binary formats the server speaks (gzip .npy arrays and label patches).

async function inflate(buffer, format) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream(format));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const DTYPES = {
  '<f4': Float32Array, '<f8': Float64Array, '|u1': Uint8Array, '|i1': Int8Array,
  '<u2': Uint16Array, '<i2': Int16Array, '<u4': Uint32Array, '<i4': Int32Array,
};

export async function parseNpy(buffer) {
  let bytes = new Uint8Array(buffer);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) bytes = await inflate(bytes, 'gzip');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error('Fortran-ordered arrays are not supported');
  const Type = DTYPES[descr];
  if (!Type) throw new Error(`unsupported dtype ${descr}`);
  const offset = start + headerLen;
  const count = shape.reduce((a, b) => a * b, 1);
  // numpy pads the header so the data is aligned: view it in place rather than copy a large image
  const aligned = (bytes.byteOffset + offset) % Type.BYTES_PER_ELEMENT === 0;
  const data = aligned ? new Type(bytes.buffer, bytes.byteOffset + offset, count) : new Type(bytes.slice(offset).buffer, 0, count);
  return { data, shape };
}

export async function parsePatch(buffer) {
  const view = new DataView(buffer);
  const magic = new TextDecoder().decode(new Uint8Array(buffer, 0, 4));
  if (magic !== 'CLPT') throw new Error('not a CellLoop patch');
  const layer = view.getUint8(5);
  const [y0, x0, y1, x1] = [8, 12, 16, 20].map((o) => view.getUint32(o, true));
  const n = (y1 - y0) * (x1 - x0);
  let before = new Int32Array(0);
  let after = new Int32Array(0);
  if (n > 0) {
    const body = await inflate(new Uint8Array(buffer, 24), 'deflate');
    const all = new Int32Array(body.buffer, body.byteOffset, 2 * n);
    before = all.slice(0, n);
    after = all.slice(n);
  }
  return { layer, box: [y0, x0, y1, x1], before, after };
}

// An array reply's bytes; gzip is inflated while it downloads rather than after (tasks reach tens of MB)
async function arrayBytes(resp) {
  if (!(resp.headers.get('Content-Type') || '').includes('gzip') || !resp.body) return resp.arrayBuffer();
  return new Response(resp.body.pipeThrough(new DecompressionStream('gzip'))).arrayBuffer();
}

// a big task opens in tens of chunk requests: one over a rate limit (429) or lost on the way waits and asks again
async function retried(fn, attempts = 5) {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      const transient = !(err instanceof ApiError) || err.status === 429 || err.status >= 500;
      if (!transient || i >= attempts) throw err;
      await new Promise((resolve) => setTimeout(resolve, err.retryAfter ? err.retryAfter * 1000 : 200 * i));
    }
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Client {
  // base: /api/task/<token> or /api/review/tasks/<id>; query: e.g. '?worker=ID', appended to every call
  constructor(base, { csrf = null, query = '' } = {}) {
    this.base = base;
    this.csrf = csrf;
    this.query = query;
    this.traffic = { sent: 0, received: 0 }; // bytes of the last change request, for the benchmark
  }

  // params: more of the query string ('channels=0,3'), after this client's own query
  async request(path, { method = 'GET', body, params = '' } = {}) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.csrf) headers['X-CSRF-Token'] = this.csrf;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    // no-referrer: the token in this page's URL must not leak into logs through the Referer header
    const extra = params ? (this.query ? '&' : '?') + params : '';
    const resp = await fetch(this.base + path + this.query + extra, { method, headers, body: payload, referrerPolicy: 'no-referrer' });
    this.traffic.sent = payload ? payload.length : 0;
    if (!resp.ok) {
      let payload = {};
      try { payload = await resp.json(); } catch (e) { /* not JSON */ }
      const error = new ApiError(resp.status, payload);
      error.retryAfter = Number(resp.headers.get('Retry-After')) || 0;
      throw error;
    }
    return resp;
  }

  async info() { return (await this.request('')).json(); }
  async image() { return parseNpy(await arrayBytes(await this.request('/image'))); }
  async labels() {
    const resp = await this.request('/labels');
    return { ...(await parseNpy(await arrayBytes(resp))), revision: Number(resp.headers.get('X-Revision')) };
  }

  // one chunk of a big task (info.chunks): level k holds every 2**k-th row and column; channels: only these
  // (ascending), the chunk's last axis then holding them in that order (default: every channel)
  imageChunk(level, row, col, channels = null) {
    const params = channels ? `channels=${channels.join(',')}` : '';
    return retried(async () => parseNpy(await arrayBytes(await this.request(`/image/${level}/${row}/${col}`, { params }))));
  }

  // revision: the revision being assembled; the server answers 409 (with the current one) if the task moved on
  labelsChunk(level, row, col, revision) {
    const path = `/labels/${level}/${row}/${col}`;
    const sep = this.query ? '&' : '?';
    return retried(async () => {
      const resp = await fetch(this.base + path + this.query + (revision === undefined ? '' : `${sep}revision=${revision}`),
        { headers: this.csrf ? { 'X-CSRF-Token': this.csrf } : {}, referrerPolicy: 'no-referrer' });
      if (!resp.ok) {
        let payload = {};
        try { payload = await resp.json(); } catch (e) { /* not JSON */ }
        const error = new ApiError(resp.status, payload);
        error.retryAfter = Number(resp.headers.get('Retry-After')) || 0;
        throw error;
      }
      return { ...(await parseNpy(await arrayBytes(resp))), revision: Number(resp.headers.get('X-Revision')) };
    });
  }

  async change(action, body) {
    const resp = await this.request('/' + action, { method: 'POST', body });
    const buffer = await resp.arrayBuffer();
    this.traffic.received = buffer.byteLength;
    return { patch: await parsePatch(buffer), revision: Number(resp.headers.get('X-Revision')) };
  }

  // Starts the task's clock on the server; older servers start it on GET and answer 404/405 here.
  async open() {
    try {
      return await (await this.request('/open', { method: 'POST', body: {} })).json();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
      throw err;
    }
  }

  edit(baseRevision, tool, params) { return this.change('edit', { base_revision: baseRevision, tool, params }); }
  // the patch an edit would make, stored nowhere (the assist box's preview)
  preview(baseRevision, tool, params) { return this.change('preview', { base_revision: baseRevision, tool, params }); }
  undo(baseRevision) { return this.change('undo', { base_revision: baseRevision }); }
  redo(baseRevision) { return this.change('redo', { base_revision: baseRevision }); }
  async submit(baseRevision) { return this.post('submit', { base_revision: baseRevision }); }
  // a JSON action on the task: submit (crowd), start / approve / reject (review)
  async post(action, body = {}) { return (await this.request('/' + action, { method: 'POST', body })).json(); }
}
