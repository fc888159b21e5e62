// The WebGL2 renderer, in two passes. Channels live on the GPU as one float texture array (16-bit and float
// data keep their full range; display ranges and colours are uniforms), label ids as an RG32I texture (both
// layers, as the server stores them). The composite pass draws the picture at image resolution into a cache
// texture: channels blended, cells filled, outlines found by comparing a pixel's id with its four neighbours.
// The present pass only samples that cache for the view, so panning and zooming cost one texture read per
// screen pixel. The cache is kept in tiles: a display change invalidates them all and only the tiles in view
// are redrawn (the selected cell is highlighted by the present pass, so selecting one keeps every tile); a patch
// redraws just its box (plus the one-pixel ring whose outlines it may change). Zoomed
// out below 1:1, the composite pass draws straight to the screen instead. A frame whose view and display are
// the last frame's draws only the screen rectangles over what changed since (the canvas keeps its drawing buffer):
// a stroke's frames then cost the stroke's pixels, not the canvas's, and leave the CPU (software WebGL) to the
// server while the edit is on its way. A big task arrives in chunks: until the
// chunks in view are in at full resolution, the composite pass draws straight from a coarse level's textures.
import { BACKGROUND_RGB, OTHER_LAYER_RGB, OUTLINE_RGB, SELECTED_RGB } from './palette.js';

export const MAX_ACTIVE_CHANNELS = 32;

export const TILE = 256;

const VERTEX = `#version 300 es
layout(location = 0) in vec2 a_pos;
void main() { gl_Position = vec4(a_pos, 0.0, 1.0); }`;

const PRESENT = `#version 300 es
precision highp float;
precision highp int;
precision highp isampler2D;
uniform sampler2D u_cache;
uniform isampler2D u_labels;
uniform int u_active;       // label layer 0 / 1
uniform int u_selected;     // the highlighted cell (0: none): drawn here, so selecting keeps the cache
uniform float u_fill;
uniform float u_outline;
uniform vec3 u_selectedColor;
uniform vec2 u_origin;      // image (col, row) at the canvas's top-left
uniform float u_scale;      // canvas px per image px
uniform float u_canvasHeight;
uniform ivec2 u_size;       // image (width, height)
uniform vec3 u_background;
out vec4 color;
bool selectedAt(ivec2 p) {
  ivec2 v = texelFetch(u_labels, clamp(p, ivec2(0), u_size - 1), 0).xy;  // the crop's edge is no boundary
  return (u_active == 0 ? v.x : v.y) == u_selected;
}
void main() {
  vec2 img = u_origin + vec2(gl_FragCoord.x, u_canvasHeight - gl_FragCoord.y) / u_scale;
  ivec2 p = ivec2(floor(img));
  if (img.x < 0.0 || img.y < 0.0 || p.x >= u_size.x || p.y >= u_size.y) { color = vec4(u_background, 1.0); return; }
  color = texelFetch(u_cache, p, 0);
  if (u_selected != 0 && selectedAt(p)) {
    bool edge = !selectedAt(p + ivec2(1, 0)) || !selectedAt(p - ivec2(1, 0)) || !selectedAt(p + ivec2(0, 1)) || !selectedAt(p - ivec2(0, 1));
    float fill = max(u_fill, 0.5);
    color = vec4(mix(color.rgb, u_selectedColor, edge ? max(fill, u_outline) : fill), 1.0);
  }
}`;

// the composite shader for one channel texture type: float data as R32F, 8- and 16-bit integers as
// R8UI / R16UI (kept at their own bit depth; the display range scales them here)
const composite = (integer) => `#version 300 es
precision highp float;
precision highp int;
precision highp ${integer ? 'usampler2DArray' : 'sampler2DArray'};
precision highp isampler2D;
#define MAXC ${MAX_ACTIVE_CHANNELS}
uniform ${integer ? 'usampler2DArray' : 'sampler2DArray'} u_channels;
uniform isampler2D u_labels;
uniform int u_count;
uniform int u_layer[MAXC];
uniform vec3 u_color[MAXC];
uniform vec2 u_range[MAXC];
uniform bool u_invert;
uniform ivec2 u_size;       // the textures' (width, height)
uniform ivec2 u_full;       // the image's (width, height) at full resolution
uniform int u_shift;        // textures of a coarse level: one texel per 2**u_shift image px (direct mode only)
uniform bool u_direct;      // straight to the screen (zoomed out) instead of into the cache
uniform vec2 u_origin;
uniform float u_scale;
uniform float u_canvasHeight;
uniform vec3 u_background;
uniform int u_active;       // label layer 0 / 1
uniform float u_fill;
uniform float u_outline;
uniform float u_other;      // outline opacity of the other layer
uniform int u_selected;
uniform bool u_highlight;
uniform vec3 u_outlineColor;
uniform vec3 u_selectedColor;
uniform vec3 u_otherColor;
out vec4 color;

int idAt(ivec2 p, int layer) {
  ivec2 q = clamp(p, ivec2(0), u_size - 1);  // the crop's edge is not a cell boundary
  ivec2 v = texelFetch(u_labels, q, 0).xy;
  return layer == 0 ? v.x : v.y;
}

bool edge(ivec2 p, int layer, int id) {
  return id != 0 && (idAt(p + ivec2(1, 0), layer) != id || idAt(p - ivec2(1, 0), layer) != id ||
                     idAt(p + ivec2(0, 1), layer) != id || idAt(p - ivec2(0, 1), layer) != id);
}

vec3 labelColor(int id) {
  uint h = uint(id);
  h = (h ^ (h >> 16u)) * 0x45d9f3bu;
  h = (h ^ (h >> 16u)) * 0x45d9f3bu;
  h = h ^ (h >> 16u);
  float hue = float(h % 360u) / 60.0;
  float f = fract(hue);
  int k = int(floor(hue)) % 6;
  vec3 rgb = k == 0 ? vec3(1.0, f, 0.0) : k == 1 ? vec3(1.0 - f, 1.0, 0.0) : k == 2 ? vec3(0.0, 1.0, f) :
             k == 3 ? vec3(0.0, 1.0 - f, 1.0) : k == 4 ? vec3(f, 0.0, 1.0) : vec3(1.0, 0.0, 1.0 - f);
  return 0.35 + 0.65 * rgb;
}

void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);  // the cache holds row r at y = r
  if (u_direct) {
    vec2 img = u_origin + vec2(gl_FragCoord.x, u_canvasHeight - gl_FragCoord.y) / u_scale;
    p = ivec2(floor(img));
    if (img.x < 0.0 || img.y < 0.0 || p.x >= u_full.x || p.y >= u_full.y) { color = vec4(u_background, 1.0); return; }
    p = p >> u_shift;
  }
  vec3 rgb = vec3(0.0);
  for (int i = 0; i < MAXC; i++) {
    if (i >= u_count) break;
    float v = float(texelFetch(u_channels, ivec3(p, u_layer[i]), 0).r);
    float t = clamp((v - u_range[i].x) / max(u_range[i].y - u_range[i].x, 1e-12), 0.0, 1.0);
    rgb += t * u_color[i];
  }
  rgb = clamp(rgb, 0.0, 1.0);
  if (u_invert) rgb = 1.0 - rgb;
  int id = idAt(p, u_active);
  bool selected = id != 0 && id == u_selected;
  if (id != 0) {
    float fill = (selected && u_highlight) ? max(u_fill, 0.5) : u_fill;
    rgb = mix(rgb, (selected && u_highlight) ? u_selectedColor : labelColor(id), fill);
  }
  if (u_other > 0.0) {
    int other = idAt(p, 1 - u_active);
    if (edge(p, 1 - u_active, other)) rgb = mix(rgb, u_otherColor, u_other);
  }
  if (edge(p, u_active, id)) rgb = mix(rgb, (selected && u_highlight) ? u_selectedColor : u_outlineColor, u_outline);
  color = vec4(rgb, 1.0);
}`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

function link(gl, fragment) {
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, fragment));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  const uniforms = {};
  const n = gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS);
  for (let i = 0; i < n; i++) {
    const name = gl.getActiveUniform(program, i).name.replace(/\[0\]$/, '');
    uniforms[name] = gl.getUniformLocation(program, name);
  }
  return { program, uniforms };
}

// a box of one plane (width px a row) as a contiguous array
function planeBlock(plane, width, [y0, x0, y1, x1]) {
  const w = x1 - x0;
  const out = new plane.constructor((y1 - y0) * w);
  for (let y = y0; y < y1; y++) out.set(plane.subarray(y * width + x0, y * width + x1), (y - y0) * w);
  return out;
}

function nearest(gl, target) {
  gl.texParameteri(target, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(target, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.texParameteri(target, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(target, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
}

export class GLRenderer {
  constructor(canvas) {
    // preserveDrawingBuffer: the picture stays readable (tests, screenshots) after it is shown
    const gl = canvas.getContext('webgl2', { antialias: false, preserveDrawingBuffer: true });
    if (!gl) throw new Error('WebGL2 is not available');
    this.gl = gl;
    this.canvas = canvas;
    this.present = link(gl, PRESENT);
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    gl.useProgram(this.present.program);
    gl.uniform1i(this.present.uniforms.u_cache, 2);
    gl.uniform1i(this.present.uniforms.u_labels, 1);
    this.tilesDrawn = 0; // cache rectangles composited so far (tests: selecting a cell composites none)
    this.channelTexture = gl.createTexture();
    this.labelTexture = gl.createTexture();
    this.cacheTexture = gl.createTexture();
    this.framebuffer = gl.createFramebuffer();
    this.dirty = [];
    this.displayKey = null;
    this.frameKey = null; // view and display of the last frame
    this.changed = null;  // image rectangles changed since the last frame; null: everything
    this.presented = 0;   // canvas pixels the last frame drew (tests: a patch's frame draws only its box)
  }

  // rectangles of the image whose picture changed: the next frame redraws them (a long list: the whole frame)
  changedBox(box) {
    if (this.changed && this.changed.length < 16) this.changed.push(box);
    else this.changed = null;
  }

  get name() {
    const gl = this.gl;
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    return `WebGL2: ${info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER)}`;
  }

  format(Type) {
    const gl = this.gl;
    const formats = new Map([
      [Float32Array, [gl.R32F, gl.RED, gl.FLOAT]],
      [Uint16Array, [gl.R16UI, gl.RED_INTEGER, gl.UNSIGNED_SHORT]],
      [Uint8Array, [gl.R8UI, gl.RED_INTEGER, gl.UNSIGNED_BYTE]],
    ]);
    return formats.get(Type);
  }

  // planes: one typed array (H*W) per channel, all of one type (channels.js splitChannels)
  setImage(planes, width, height) {
    this.allocate(width, height, planes.length, planes[0].constructor);
    this.uploadImage(planes, [0, 0, height, width]);
  }

  // the textures of a width x height image with `count` channels of typed-array type Type, still empty
  allocate(width, height, count, Type) {
    const gl = this.gl;
    this.width = width;
    this.height = height;
    const [internal] = this.format(Type);
    this.imageType = Type;
    this.composite = link(gl, composite(internal !== gl.R32F));
    gl.useProgram(this.composite.program);
    gl.uniform1i(this.composite.uniforms.u_channels, 0);
    gl.uniform1i(this.composite.uniforms.u_labels, 1);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.channelTexture);
    nearest(gl, gl.TEXTURE_2D_ARRAY);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texStorage3D(gl.TEXTURE_2D_ARRAY, 1, internal, width, height, count);
    gl.activeTexture(gl.TEXTURE2);
    gl.bindTexture(gl.TEXTURE_2D, this.cacheTexture);
    nearest(gl, gl.TEXTURE_2D);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.RGBA8, width, height);
    gl.bindFramebuffer(gl.FRAMEBUFFER, this.framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, this.cacheTexture, 0);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    this.tilesX = Math.ceil(width / TILE);
    this.tilesY = Math.ceil(height / TILE);
    this.valid = new Uint8Array(this.tilesX * this.tilesY);
    this.changed = null;
  }

  // the channels inside box [y0, x0, y1, x1] of the full planes. The box is copied out first: with
  // UNPACK_ROW_LENGTH the browser would copy every full row the box spans (an 8192² task's chunk: 16 MB, not 1 MB)
  uploadImage(planes, [y0, x0, y1, x1]) {
    const gl = this.gl;
    const [, format, type] = this.format(planes[0].constructor);
    const whole = y0 === 0 && x0 === 0 && y1 === this.height && x1 === this.width;
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.channelTexture);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    if (y1 > y0 && x1 > x0) {
      planes.forEach((plane, i) => {
        const data = whole ? plane : planeBlock(plane, this.width, [y0, x0, y1, x1]);
        gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, x0, y0, i, x1 - x0, y1 - y0, 1, format, type, data);
      });
    }
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    this.invalidate([y0, x0, y1, x1]);
  }

  // upload: false for labels still blank (a big task's chunks come later, through loadLabels)
  setLabels(labels, { upload = true } = {}) {
    const gl = this.gl;
    this.labels = labels;
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.labelTexture);
    nearest(gl, gl.TEXTURE_2D);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RG32I, labels.width, labels.height, 0, gl.RG_INTEGER, gl.INT,
      upload ? labels.shown : null);
    if (this.valid) this.valid.fill(0);
    this.changed = null;
  }

  subLabels(box) {
    const [y0, x0, y1, x1] = box;
    const gl = this.gl;
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.labelTexture);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, x0, y0, x1 - x0, y1 - y0, gl.RG_INTEGER, gl.INT, this.labels.block(box));
  }

  // re-upload the shown labels inside box (after a patch or a preview); its picture is redrawn next frame
  updateLabels(box) {
    const [y0, x0, y1, x1] = box;
    if (y1 <= y0 || x1 <= x0) return;
    this.subLabels(box);
    const ring = [Math.max(0, y0 - 1), Math.max(0, x0 - 1), Math.min(this.height, y1 + 1), Math.min(this.width, x1 + 1)];
    this.dirty.push(ring);
    this.changedBox(ring);
  }

  // a chunk of labels arrived (not an edit): its tiles are composited again when next in view
  loadLabels(box) {
    this.subLabels(box);
    this.invalidate(box);
  }

  invalidate([y0, x0, y1, x1]) {
    if (y1 > y0 && x1 > x0) this.changedBox([Math.max(0, y0 - 1), Math.max(0, x0 - 1), y1 + 1, x1 + 1]);
    // one pixel more on each side: a neighbour's outline depends on this box's ids
    const t0 = Math.floor(Math.max(0, y0 - 1) / TILE);
    const t1 = Math.ceil(Math.min(this.height, y1 + 1) / TILE);
    const s0 = Math.floor(Math.max(0, x0 - 1) / TILE);
    const s1 = Math.ceil(Math.min(this.width, x1 + 1) / TILE);
    for (let ty = t0; ty < t1; ty++) for (let tx = s0; tx < s1; tx++) this.valid[ty * this.tilesX + tx] = 0;
  }

  // --- a big task while its chunks arrive ---------------------------------------------------------------------
  // chunkSize: level-0 chunk side; until markLoaded has been called for every chunk in view, draw() uses the
  // coarse level given to setCoarse
  expectChunks(chunkSize) {
    this.chunkSize = chunkSize;
    this.chunkCols = Math.ceil(this.width / chunkSize);
    this.loadedChunks = new Uint8Array(Math.ceil(this.height / chunkSize) * this.chunkCols);
    this.complete = false;
  }

  markLoaded([i, j]) {
    this.loadedChunks[i * this.chunkCols + j] = 1;
    this.complete = this.loadedChunks.every((v) => v === 1);
  }

  viewLoaded(view) {
    if (this.complete || !this.loadedChunks) return true;
    const [r0, c0, r1, c1] = view.visible();
    const s = this.chunkSize;
    for (let i = Math.floor(r0 / s); i < Math.ceil(r1 / s); i++) {
      for (let j = Math.floor(c0 / s); j < Math.ceil(c1 / s); j++) if (!this.loadedChunks[i * this.chunkCols + j]) return false;
    }
    return true;
  }

  // a coarse level: planes and interleaved labels of width x height texels, one per 2**shift image px; a plane
  // still missing (a channel not fetched yet) is uploaded later, through updateCoarse
  setCoarse(planes, labels, width, height, shift) {
    const gl = this.gl;
    const [internal, format, type] = this.format(planes.find(Boolean).constructor);
    this.coarse = { width, height, shift, channels: gl.createTexture(), labels: gl.createTexture() };
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.coarse.channels);
    nearest(gl, gl.TEXTURE_2D_ARRAY);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texStorage3D(gl.TEXTURE_2D_ARRAY, 1, internal, width, height, planes.length);
    planes.forEach((plane, i) => plane && gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, 0, 0, i, width, height, 1, format, type, plane));
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.coarse.labels);
    nearest(gl, gl.TEXTURE_2D);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RG32I, width, height, 0, gl.RG_INTEGER, gl.INT, labels);
    this.bindFull();
    this.changed = null;
  }

  // channels `indices` of the coarse level have arrived (planes[i] for channel i)
  updateCoarse(planes, indices) {
    if (!this.coarse) return;
    const gl = this.gl;
    const { width, height } = this.coarse;
    const [, format, type] = this.format(planes[indices[0]].constructor);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.coarse.channels);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    for (const i of indices) gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, 0, 0, i, width, height, 1, format, type, planes[i]);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    this.bindFull();
    this.changed = null;
  }

  bindFull() {
    const gl = this.gl;
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.channelTexture);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.labelTexture);
  }

  dropCoarse() {
    if (!this.coarse) return;
    this.gl.deleteTexture(this.coarse.channels);
    this.gl.deleteTexture(this.coarse.labels);
    this.coarse = null;
    this.changed = null;
  }

  // cached: the picture without the selection highlight (the present pass adds it)
  setCompositeUniforms(display, cached = false) {
    const gl = this.gl;
    const u = this.composite.uniforms;
    const shown = display.channels.slice(0, MAX_ACTIVE_CHANNELS);
    gl.uniform1i(u.u_count, shown.length);
    if (shown.length) {
      gl.uniform1iv(u.u_layer, shown.map((c) => c.index));
      gl.uniform3fv(u.u_color, shown.flatMap((c) => c.rgb));
      gl.uniform2fv(u.u_range, shown.flatMap((c) => [c.min, c.max]));
    }
    gl.uniform1i(u.u_invert, display.invert ? 1 : 0);
    gl.uniform2i(u.u_size, this.width, this.height);
    gl.uniform2i(u.u_full, this.width, this.height);
    gl.uniform1i(u.u_shift, 0);
    gl.uniform1i(u.u_active, display.layer);
    gl.uniform1f(u.u_fill, display.fill);
    gl.uniform1f(u.u_outline, display.outline);
    gl.uniform1f(u.u_other, display.otherOutline);
    gl.uniform1i(u.u_selected, cached ? 0 : display.selected || 0);
    gl.uniform1i(u.u_highlight, !cached && display.highlight ? 1 : 0);
    gl.uniform3fv(u.u_outlineColor, OUTLINE_RGB);
    gl.uniform3fv(u.u_selectedColor, SELECTED_RGB);
    gl.uniform3fv(u.u_otherColor, OTHER_LAYER_RGB);
  }

  // a display change makes the whole cache stale; so do more patches than are worth replaying one by one. The
  // selected cell is not in the cache (the present pass highlights it), so selecting another keeps every tile.
  checkCache(display) {
    const key = JSON.stringify({ ...display, selected: 0, highlight: false });
    if (key !== this.displayKey || this.dirty.length > 64) {
      this.displayKey = key;
      this.valid.fill(0);
      this.dirty = [];
    }
  }

  // bring the cache up to date where it is seen or was changed: [y0, x0, y1, x1] rectangles
  refresh(view, display) {
    const rects = this.dirty.splice(0);
    const [r0, c0, r1, c1] = view.visible();
    for (let ty = Math.floor(r0 / TILE); ty < Math.ceil(r1 / TILE); ty++) {
      for (let tx = Math.floor(c0 / TILE); tx < Math.ceil(c1 / TILE); tx++) {
        const t = ty * this.tilesX + tx;
        if (this.valid[t]) continue;
        this.valid[t] = 1;
        rects.push([ty * TILE, tx * TILE, Math.min(this.height, (ty + 1) * TILE), Math.min(this.width, (tx + 1) * TILE)]);
      }
    }
    if (!rects.length) return;
    const gl = this.gl;
    gl.bindFramebuffer(gl.FRAMEBUFFER, this.framebuffer);
    gl.viewport(0, 0, this.width, this.height);
    gl.useProgram(this.composite.program);
    this.setCompositeUniforms(display, true);
    gl.uniform1i(this.composite.uniforms.u_direct, 0);
    this.tilesDrawn += rects.length;
    gl.enable(gl.SCISSOR_TEST);
    for (const [y0, x0, y1, x1] of rects) {
      gl.scissor(x0, y0, x1 - x0, y1 - y0);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    }
    gl.disable(gl.SCISSOR_TEST);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  }

  draw(view, display) {
    this.checkCache(display);
    const mode = this.coarse && !this.viewLoaded(view) ? 'coarse' : view.scale < 1 ? 'direct' : 'present';
    const key = JSON.stringify([mode, view.x, view.y, view.scale, this.canvas.width, this.canvas.height, display]);
    const rects = key === this.frameKey ? this.changed : null;
    this.frameKey = key;
    this.changed = [];
    if (rects && !rects.length) {
      this.presented = 0;
      return;
    }
    if (mode !== 'present') {
      this.scissored(view, rects, () => (mode === 'coarse' ? this.drawCoarse(view, display) : this.drawDirect(view, display)));
      return;
    }
    this.refresh(view, display);
    this.scissored(view, rects, () => this.drawPresent(view, display));
  }

  // run draw() once for the whole canvas (rects null) or once per image rectangle, clipped to its screen pixels
  // (one canvas pixel more around each: a partly covered pixel is redrawn whole)
  scissored(view, rects, draw) {
    const gl = this.gl;
    const cw = this.canvas.width;
    const ch = this.canvas.height;
    if (!rects) {
      this.presented = cw * ch;
      draw();
      return;
    }
    this.presented = 0;
    gl.enable(gl.SCISSOR_TEST);
    for (const [y0, x0, y1, x1] of rects) {
      const sx0 = Math.max(0, Math.floor((x0 - view.x) * view.scale) - 1);
      const sx1 = Math.min(cw, Math.ceil((x1 - view.x) * view.scale) + 1);
      const sy0 = Math.max(0, Math.floor((y0 - view.y) * view.scale) - 1);
      const sy1 = Math.min(ch, Math.ceil((y1 - view.y) * view.scale) + 1);
      if (sx1 <= sx0 || sy1 <= sy0) continue;
      gl.scissor(sx0, ch - sy1, sx1 - sx0, sy1 - sy0);
      this.presented += (sx1 - sx0) * (sy1 - sy0);
      draw();
    }
    gl.disable(gl.SCISSOR_TEST);
  }

  drawPresent(view, display) {
    const gl = this.gl;
    const u = this.present.uniforms;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.useProgram(this.present.program);
    gl.uniform2f(u.u_origin, view.x, view.y);
    gl.uniform1f(u.u_scale, view.scale);
    gl.uniform1f(u.u_canvasHeight, this.canvas.height);
    gl.uniform2i(u.u_size, this.width, this.height);
    gl.uniform3fv(u.u_background, BACKGROUND_RGB);
    gl.uniform1i(u.u_active, display.layer);
    gl.uniform1i(u.u_selected, display.highlight ? display.selected || 0 : 0);
    gl.uniform1f(u.u_fill, display.fill);
    gl.uniform1f(u.u_outline, display.outline);
    gl.uniform3fv(u.u_selectedColor, SELECTED_RGB);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  // Zoomed out, the screen has fewer pixels than the image: compositing them directly beats filling the
  // whole cache (opening a 2048² task fitted to the window draws ~0.5 M pixels instead of 4 M).
  drawDirect(view, display) {
    const gl = this.gl;
    const u = this.composite.uniforms;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.useProgram(this.composite.program);
    this.setCompositeUniforms(display);
    gl.uniform1i(u.u_direct, 1);
    gl.uniform2f(u.u_origin, view.x, view.y);
    gl.uniform1f(u.u_scale, view.scale);
    gl.uniform1f(u.u_canvasHeight, this.canvas.height);
    gl.uniform3fv(u.u_background, BACKGROUND_RGB);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  // the coarse level, straight to the screen: what is in view before its full-resolution chunks are in
  drawCoarse(view, display) {
    const gl = this.gl;
    const u = this.composite.uniforms;
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.coarse.channels);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.coarse.labels);
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.useProgram(this.composite.program);
    this.setCompositeUniforms(display);
    gl.uniform2i(u.u_size, this.coarse.width, this.coarse.height);
    gl.uniform1i(u.u_shift, this.coarse.shift);
    gl.uniform1i(u.u_direct, 1);
    gl.uniform2f(u.u_origin, view.x, view.y);
    gl.uniform1f(u.u_scale, view.scale);
    gl.uniform1f(u.u_canvasHeight, this.canvas.height);
    gl.uniform3fv(u.u_background, BACKGROUND_RGB);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    this.bindFull();
  }

  dispose() {
    this.dropCoarse();
    const gl = this.gl;
    for (const t of [this.channelTexture, this.labelTexture, this.cacheTexture]) gl.deleteTexture(t);
    gl.deleteFramebuffer(this.framebuffer);
    for (const p of [this.composite, this.present]) if (p) gl.deleteProgram(p.program);
  }

  // wait until the GPU has drawn (for timing: the frame is really done, not just queued)
  finish() {
    const px = new Uint8Array(4);
    this.gl.readPixels(0, 0, 1, 1, this.gl.RGBA, this.gl.UNSIGNED_BYTE, px);
  }
}
