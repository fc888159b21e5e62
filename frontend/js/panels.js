// The editor's panels: the toolbar (each tool with its key), the stage (the view canvas and the overlay
// for cursor previews), the sidebar (channels, display controls, cells) and the help overlay. Built once per
// task; the controls call back into the editor.
import { KEYS, keyHint, keyLabel } from './keymap.js';
import { TOOLS } from './tools.js';

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

export function buildPanels(editor) {
  const toolbar = el('nav', { className: 'toolbar' });
  editor.toolButtons = {};
  const assist = editor.info.assist || { available: false, reason: 'this server keeps no model maps' };
  for (const t of TOOLS) {
    const hint = keyHint(`tool:${t.name}`);
    const off = t.assist && !assist.available;
    const title = `${t.label} (${hint})` + (t.assist ? (off ? `: off, ${assist.reason}` : ` · maps of ${assist.model}`) : '');
    const b = el('button', { className: t.assist ? 'tool assist' : 'tool', title, disabled: editor.readOnly || off },
      t.label, el('kbd', {}, hint));
    b.dataset.tool = t.name;
    b.addEventListener('click', () => editor.run(`tool:${t.name}`));
    editor.toolButtons[t.name] = b;
    toolbar.append(b);
  }
  editor.brushInfo = el('span', { className: 'brush-info' });
  editor.modeSelect = el('select', { title: 'write mode: exclude paints only background; overwrite paints over cells', disabled: editor.readOnly },
    el('option', { value: 'exclude' }, 'exclude'), el('option', { value: 'overwrite' }, 'overwrite'));
  editor.modeSelect.addEventListener('change', () => { editor.overwrite = editor.modeSelect.value === 'overwrite'; });
  const newCell = el('button', { title: `new cell (${keyHint('newCell')})`, disabled: editor.readOnly }, 'New cell', el('kbd', {}, 'N'));
  newCell.addEventListener('click', () => editor.run('newCell'));
  editor.newCellButton = newCell;
  editor.undoButton = el('button', { title: 'undo (Ctrl+Z)', disabled: editor.readOnly }, 'Undo');
  editor.undoButton.addEventListener('click', () => editor.run('undo'));
  editor.redoButton = el('button', { title: 'redo (Ctrl+Shift+Z)', disabled: editor.readOnly }, 'Redo');
  editor.redoButton.addEventListener('click', () => editor.run('redo'));
  const fit = el('button', { title: 'fit to window (0)' }, 'Fit');
  fit.addEventListener('click', () => editor.run('resetView'));
  const help = el('button', { title: 'keys (?)' }, '?');
  help.addEventListener('click', () => editor.run('help'));
  // the assist box: a sensitivity slider and apply / cancel, shown while its preview is up
  editor.sensitivity = el('input', { type: 'range', min: 0, max: 1, step: 0.05, value: 0.5, className: 'sensitivity',
    title: 'sensitivity: higher finds more, smaller cells; lower fewer, larger ones' });
  editor.sensitivity.addEventListener('input', () => editor.boxSensitivity(Number(editor.sensitivity.value)));
  const applyBox = el('button', { className: 'apply-box', title: 'apply the preview (Enter)' }, 'Apply');
  applyBox.addEventListener('click', () => editor.run('apply'));
  const cancelBox = el('button', { className: 'cancel-box', title: 'cancel (Esc)' }, 'Cancel');
  cancelBox.addEventListener('click', () => editor.run('cancel'));
  editor.boxPanel = el('span', { className: 'box-panel', hidden: true }, 'sensitivity ', editor.sensitivity, applyBox, cancelBox);
  editor.assistInfo = el('span', { className: 'assist-info', title: assist.available ? `model maps of ${assist.model}` : assist.reason },
    assist.available ? `assist: ${assist.model}` : 'assist off');
  toolbar.append(editor.boxPanel, el('span', { className: 'sep' }), editor.assistInfo, editor.brushInfo, editor.modeSelect, newCell, editor.undoButton,
    editor.redoButton, fit, help);

  // the page may ship the view's canvas (it shows where the picture goes before the script runs)
  editor.canvas = editor.container.querySelector('canvas.view') || el('canvas', { className: 'view' });
  editor.overlay = el('canvas', { className: 'overlay' });
  editor.stage = el('div', { className: 'stage' }, editor.canvas, editor.overlay);
  editor.renderer = editor.makeRenderer(editor.canvas);
  editor.stage.dataset.renderer = editor.renderer.name;

  editor.channelList = el('div', { className: 'channels' });
  editor.grayBox = el('input', { type: 'checkbox', title: 'grayscale: the active channel alone (Y)' });
  editor.grayBox.addEventListener('change', () => { editor.channels.gray = editor.grayBox.checked; editor.channels.changed(); });
  editor.invertBox = el('input', { type: 'checkbox', title: 'invert (I)' });
  editor.invertBox.addEventListener('change', () => { editor.channels.invert = editor.invertBox.checked; editor.channels.changed(); });
  editor.layerSelect = el('select', { title: 'label layer (F)' },
    ...editor.info.layers.map((name, i) => el('option', { value: String(i) }, name)));
  editor.layerSelect.addEventListener('change', () => editor.setLayer(Number(editor.layerSelect.value)));
  const slider = (key, title) => {
    const s = el('input', { type: 'range', min: 0, max: 1, step: 0.05, value: editor.display[key], title });
    s.addEventListener('input', () => { editor.display[key] = Number(s.value); editor.requestDraw(); });
    return s;
  };
  editor.fillSlider = slider('fill', 'fill opacity (Z)');
  editor.outlineSlider = slider('outline', 'outline opacity (O)');
  editor.otherSlider = slider('otherOutline', "the other layer's outlines");
  editor.highlightBox = el('input', { type: 'checkbox', checked: true, title: 'highlight the selected cell (H)' });
  editor.highlightBox.addEventListener('change', () => { editor.display.highlight = editor.highlightBox.checked; editor.requestDraw(); });
  const row = (label, input) => el('label', { className: 'row' }, el('span', {}, label), input);
  const displayBox = el('section', {}, el('h3', {}, 'Display'),
    row('grayscale', editor.grayBox), row('invert', editor.invertBox), row('layer', editor.layerSelect),
    row('fill', editor.fillSlider), row('outlines', editor.outlineSlider), row('other layer', editor.otherSlider),
    row('highlight', editor.highlightBox));
  editor.cursorInfo = el('div', { className: 'cursor-info' }, '\u00a0');
  editor.cellListElement = el('ul', { className: 'cells' });
  editor.cellCount = el('span');
  const sidebar = el('aside', { className: 'sidebar' },
    el('section', { className: 'channel-box' }, el('h3', {}, 'Channels'), editor.channelList), displayBox,
    el('section', { className: 'cell-box' }, el('h3', {}, 'Cells ', editor.cellCount), editor.cursorInfo, editor.cellListElement));

  editor.message = el('span', { className: 'message', role: 'status' });
  editor.queueInfo = el('span', { className: 'queue' });
  const statusbar = el('div', { className: 'statusbar' }, editor.message, editor.queueInfo);
  editor.helpBox = buildHelp();
  editor.container.replaceChildren(toolbar, el('div', { className: 'workspace' }, editor.stage, sidebar), statusbar, editor.helpBox);
}

function buildHelp() {
  const rows = KEYS.map((k) => el('tr', {}, el('td', {}, k.keys.map(keyLabel).join(' / ')), el('td', {}, k.help)));
  // Close sits in the card's header, which stays in view while the key table scrolls (a short window)
  const close = el('button', { className: 'help-close' }, 'Close');
  const box = el('div', { className: 'help', hidden: true },
    el('div', { className: 'help-card' }, el('div', { className: 'help-head' }, el('h2', {}, 'Keys'), close),
      el('table', {}, el('tbody', {}, ...rows)),
      el('p', {}, 'Wheel zooms to the cursor. Edits are saved as you make them; the queue counter shows those still on their way.')));
  close.addEventListener('click', () => { box.hidden = true; });
  return box;
}
