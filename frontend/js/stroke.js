// Brush strokes: the trace the mouse drew, made fit to send (integer pixels, no repeats, at most
// MAX_POINTS per request) and rasterised locally exactly as the server does (backend/edits/brush.py:
// every pixel within `radius` of a segment of the trace), so the preview matches the stored result.
export const MAX_POINTS = 2000;
export const MAX_LENGTH = 50000; // px of trace per request, half the least the server accepts

// integer [row, col] points, consecutive duplicates dropped
export function tracePoints(points) {
  const out = [];
  for (const [r, c] of points) {
    const p = [Math.floor(r), Math.floor(c)];
    const last = out[out.length - 1];
    if (!last || last[0] !== p[0] || last[1] !== p[1]) out.push(p);
  }
  return out;
}

// Drop points that lie within `tolerance` px of the line between their neighbours (Douglas-Peucker); a
// stroke's painted area changes by less than a pixel at tolerance 0.5.
export function simplify(points, tolerance = 0.5) {
  if (points.length < 3) return points.slice();
  const keep = new Uint8Array(points.length);
  keep[0] = keep[points.length - 1] = 1;
  const stack = [[0, points.length - 1]];
  while (stack.length) {
    const [a, b] = stack.pop();
    const [ay, ax] = points[a];
    const [by, bx] = points[b];
    const dy = by - ay;
    const dx = bx - ax;
    const len = Math.hypot(dy, dx);
    let worst = -1;
    let worstDist = tolerance;
    for (let i = a + 1; i < b; i++) {
      const [py, px] = points[i];
      const d = len === 0 ? Math.hypot(py - ay, px - ax) : Math.abs(dx * (py - ay) - dy * (px - ax)) / len;
      if (d > worstDist) { worstDist = d; worst = i; }
    }
    if (worst >= 0) {
      keep[worst] = 1;
      stack.push([a, worst], [worst, b]);
    }
  }
  return points.filter((_, i) => keep[i]);
}

// One edit request per chunk of at most `maxPoints` points and `maxLength` px of trace (the server bounds
// both); chunks share their end points so the trace stays continuous across requests.
export function chunks(points, maxPoints = MAX_POINTS, maxLength = MAX_LENGTH) {
  const out = [];
  let current = [points[0]];
  let length = 0;
  for (let i = 1; i < points.length; i++) {
    const step = Math.hypot(points[i][0] - points[i - 1][0], points[i][1] - points[i - 1][1]);
    if (current.length >= maxPoints || (length + step > maxLength && current.length > 1)) {
      out.push(current);
      current = [points[i - 1]];
      length = 0;
    }
    current.push(points[i]);
    length += step;
  }
  out.push(current);
  return out;
}

// box [y0, x0, y1, x1] and mask (Uint8Array, row-major over the box) of the pixels the trace covers
export function strokeMask(points, radius, height, width) {
  const r = radius;
  let y0 = Infinity; let x0 = Infinity; let y1 = -Infinity; let x1 = -Infinity;
  for (const [y, x] of points) {
    y0 = Math.min(y0, y); x0 = Math.min(x0, x); y1 = Math.max(y1, y); x1 = Math.max(x1, x);
  }
  y0 = Math.max(y0 - r, 0); x0 = Math.max(x0 - r, 0);
  y1 = Math.min(y1 + r + 1, height); x1 = Math.min(x1 + r + 1, width);
  const bw = Math.max(0, x1 - x0);
  const mask = new Uint8Array(Math.max(0, y1 - y0) * bw);
  const limit = r * r + 1e-9;
  const segments = points.length === 1 ? [[points[0], points[0]]] : points.slice(1).map((p, i) => [points[i], p]);
  for (const [[ay, ax], [by, bx]] of segments) {
    const sy0 = Math.max(Math.min(ay, by) - r, 0); const sy1 = Math.min(Math.max(ay, by) + r + 1, height);
    const sx0 = Math.max(Math.min(ax, bx) - r, 0); const sx1 = Math.min(Math.max(ax, bx) + r + 1, width);
    const dy = by - ay; const dx = bx - ax;
    const len2 = dy * dy + dx * dx;
    for (let y = sy0; y < sy1; y++) {
      for (let x = sx0; x < sx1; x++) {
        let py = y - ay; let px = x - ax;
        if (len2) {
          const t = Math.min(1, Math.max(0, (py * dy + px * dx) / len2));
          py -= t * dy; px -= t * dx;
        }
        if (py * py + px * px <= limit) mask[(y - y0) * bw + (x - x0)] = 1;
      }
    }
  }
  return { box: [y0, x0, y1, x1], mask };
}
