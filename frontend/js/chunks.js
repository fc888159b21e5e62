// Which chunks of a big task to load, in what order. The server cuts each level into square chunks (info.chunks:
// {size, levels: [[h, w], ...]}; level k is every 2**k-th row and column of the task). Opening, the editor loads the
// coarsest level that still has a texel per canvas pixel for the chunks in view, draws, and then fills in level 0,
// nearest to the middle of the view first.

// the level to show at `scale` canvas px per image px: 2**level image px per texel, never fewer texels than pixels
export function levelFor(layout, scale) {
  const level = Math.floor(Math.log2(1 / Math.max(scale, 1e-6)));
  return Math.min(Math.max(level, 0), layout.levels.length - 1);
}

// [row, col] of the chunks of `level` that the image rectangle [r0, c0, r1, c1] (level-0 px) overlaps, the ones
// nearest its centre (or `center`, [row, col]) first
export function chunksIn(layout, level, [r0, c0, r1, c1], center = null) {
  const span = layout.size << level; // level-0 px one chunk of this level covers
  const [h, w] = layout.levels[0];
  const rows = Math.ceil(h / span);
  const cols = Math.ceil(w / span);
  const [cy, cx] = center || [(r0 + r1) / 2, (c0 + c1) / 2];
  // from the middle of the chunk's own box (the last row and column of chunks may be narrow)
  const distance = ([i, j]) => Math.hypot((i * span + Math.min(h, (i + 1) * span)) / 2 - cy,
    (j * span + Math.min(w, (j + 1) * span)) / 2 - cx);
  const out = [];
  for (let i = Math.floor(r0 / span); i < Math.min(rows, Math.ceil(r1 / span)); i++) {
    for (let j = Math.floor(c0 / span); j < Math.min(cols, Math.ceil(c1 / span)); j++) out.push([i, j]);
  }
  return out.sort((a, b) => distance(a) - distance(b));
}

// the chunk's box in level-0 px, half-open [y0, x0, y1, x1], for level 0
export function chunkBox(layout, [i, j]) {
  const s = layout.size;
  const [h, w] = layout.levels[0];
  return [i * s, j * s, Math.min(h, (i + 1) * s), Math.min(w, (j + 1) * s)];
}

// run fn over items with at most `limit` in flight (a browser opens six connections to a host)
export async function eachLimited(items, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++];
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// an (h, w, C) interleaved chunk into per-channel planes of width `width` at (y0, x0)
export function scatterChannels(chunk, planes, width, y0, x0) {
  const [h, w, count] = chunk.shape;
  const d = chunk.data;
  for (let y = 0; y < h; y++) {
    let k = y * w * count;
    const base = (y0 + y) * width + x0;
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < count; c++) planes[c][base + x] = d[k++];
    }
  }
}

// one channel of an (h, w, C) chunk as a contiguous plane (the layout a texture upload wants)
export function channelOf(chunk, c) {
  const [h, w, count] = chunk.shape;
  const out = new chunk.data.constructor(h * w);
  const d = chunk.data;
  for (let i = 0, k = c; i < out.length; i++, k += count) out[i] = d[k];
  return out;
}
