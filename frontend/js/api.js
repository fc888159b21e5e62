// API client: JSON calls and the two binary formats the server speaks (gzip .npy arrays and label patches).

async function inflate(buffer, format) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream(format));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const DTYPES = { '<f4': Float32Array, '<i4': Int32Array, '|u1': Uint8Array, '<u2': Uint16Array, '<f8': Float64Array };

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
  const data = new Type(bytes.slice(offset).buffer);
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

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Client {
  constructor(base, csrf = null) {
    this.base = base; // e.g. /api/task/<token> or /api/review/tasks/<id>
    this.csrf = csrf;
  }

  async request(path, { method = 'GET', body } = {}) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.csrf) headers['X-CSRF-Token'] = this.csrf;
    const resp = await fetch(this.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!resp.ok) {
      let payload = {};
      try { payload = await resp.json(); } catch (e) { /* not JSON */ }
      throw new ApiError(resp.status, payload);
    }
    return resp;
  }

  async info() { return (await this.request('')).json(); }
  async image() { return parseNpy(await (await this.request('/image')).arrayBuffer()); }
  async labels() {
    const resp = await this.request('/labels');
    return { ...(await parseNpy(await resp.arrayBuffer())), revision: Number(resp.headers.get('X-Revision')) };
  }

  async change(action, body) {
    const resp = await this.request('/' + action, { method: 'POST', body });
    return { patch: await parsePatch(await resp.arrayBuffer()), revision: Number(resp.headers.get('X-Revision')) };
  }

  edit(baseRevision, tool, params) { return this.change('edit', { base_revision: baseRevision, tool, params }); }
  undo(baseRevision) { return this.change('undo', { base_revision: baseRevision }); }
  redo(baseRevision) { return this.change('redo', { base_revision: baseRevision }); }
  async submit(baseRevision) {
    return (await this.request('/submit', { method: 'POST', body: { base_revision: baseRevision } })).json();
  }
}
