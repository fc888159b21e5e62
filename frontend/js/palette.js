// Colours shared by both renderers, so the WebGL and Canvas2D paths draw the same picture.
export const OUTLINE_RGB = [1.0, 1.0, 1.0];
export const SELECTED_RGB = [1.0, 0.2, 0.2];
export const OTHER_LAYER_RGB = [0.3, 0.9, 1.0];
export const BACKGROUND_RGB = [0.07, 0.07, 0.08];

// A label id's fill colour: a cheap integer hash to a hue, bright enough over dark tissue. The shader
// computes the same function (renderer.js).
export function labelColor(id) {
  let h = Math.imul(id ^ (id >>> 16), 0x45d9f3b);
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b);
  h = (h ^ (h >>> 16)) >>> 0;
  const hue = (h % 360) / 60;
  const f = hue - Math.floor(hue);
  const rgb = [[1, f, 0], [1 - f, 1, 0], [0, 1, f], [0, 1 - f, 1], [f, 0, 1], [1, 0, 1 - f]][Math.floor(hue) % 6];
  return rgb.map((v) => 0.35 + 0.65 * v);
}

export function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16 & 255) / 255, (n >> 8 & 255) / 255, (n & 255) / 255];
}

// Default channel colours, in channel order (two-channel Mesmer crops: nuclear green, membrane red).
export const CHANNEL_COLORS = ['#00ff00', '#ff0000', '#0080ff', '#ffff00', '#ff00ff', '#00ffff', '#ff8000', '#ffffff'];
