// The keyboard map: DeepCell Label's keys (DESIGN.md, "Editor conventions"), plus napari's 1 / 2 / 4.
// One table feeds the key handler, the help overlay and the toolbar's key hints. Letters match in either
// case, so Caps Lock changes nothing; Shift is a separate modifier.
export const KEYS = [
  // tools
  { keys: ['v'], action: 'tool:select', help: 'select a cell' },
  { keys: ['b', '2'], action: 'tool:paint', help: 'brush' },
  { keys: ['e', '1'], action: 'tool:erase', help: 'eraser' },
  { keys: ['x'], action: 'swapBrush', help: 'swap brush and eraser' },
  { keys: ['g', '4'], action: 'tool:flood', help: 'flood fill with the brush label' },
  { keys: ['t'], action: 'tool:threshold', help: 'threshold: drag a box' },
  { keys: ['w'], action: 'tool:split', help: 'watershed split: click two seeds in one cell' },
  { keys: ['m'], action: 'tool:autofit', help: 'autofit a cell to the active channel' },
  { keys: ['q'], action: 'tool:shrink', help: 'shrink a cell by 1 px' },
  { keys: ['shift+q'], action: 'tool:grow', help: 'grow a cell by 1 px' },
  { keys: ['k'], action: 'tool:trim', help: 'trim stray pixels (keep the clicked piece)' },
  { keys: ['r'], action: 'tool:merge', help: 'replace: click the cell to keep, then the one to merge into it' },
  { keys: ['s'], action: 'tool:swap', help: 'swap two cells' },
  { keys: ['backspace', 'delete'], action: 'tool:delete', help: 'delete the selected cell (or click one)' },
  // not in DeepCell Label's map (A and P are free there): the model-assisted tools
  { keys: ['a'], action: 'tool:assist_click', help: "assist: click makes (or redraws) the model's cell there" },
  { keys: ['shift+a'], action: 'tool:assist_box', help: 'assist box: drag a box, set the sensitivity, Enter applies' },
  { keys: ['p'], action: 'tool:assist_accept', help: "accept the model's cell here (one the prelabel dropped)" },
  { keys: ['n'], action: 'newCell', help: 'new cell: the brush paints an unused id' },
  { keys: ['arrowup'], action: 'brushBigger', help: 'brush size +1' },
  { keys: ['arrowdown'], action: 'brushSmaller', help: 'brush size −1' },
  { keys: ['enter'], action: 'apply', help: 'apply (split with the seeds so far)' },
  { keys: ['escape'], action: 'cancel', help: 'cancel a multi-click tool, deselect' },
  { keys: ['ctrl+z'], action: 'undo', help: 'undo' },
  { keys: ['ctrl+shift+z', 'ctrl+y'], action: 'redo', help: 'redo' },
  // display
  { keys: ['y'], action: 'toggleGray', help: 'colour / grayscale (one channel)' },
  { keys: ['c'], action: 'nextChannel', help: 'next channel' },
  { keys: ['shift+c'], action: 'previousChannel', help: 'previous channel' },
  { keys: ['i'], action: 'toggleInvert', help: 'invert' },
  { keys: ['0'], action: 'resetView', help: 'reset the view (fit to window)' },
  { keys: ['f'], action: 'nextLayer', help: 'whole-cell / nuclear layer' },
  { keys: ['shift+f'], action: 'previousLayer', help: 'nuclear / whole-cell layer' },
  { keys: ['z'], action: 'cycleFill', help: 'fill opacity' },
  { keys: ['o'], action: 'cycleOutline', help: 'outline opacity' },
  { keys: ['h'], action: 'toggleHighlight', help: 'highlight the selected cell' },
  { keys: ['['], action: 'previousCell', help: 'previous cell' },
  { keys: [']'], action: 'nextCell', help: 'next cell' },
  { keys: ['=', '+'], action: 'zoomIn', help: 'zoom in' },
  { keys: ['-'], action: 'zoomOut', help: 'zoom out' },
  { keys: ['space'], action: null, help: 'hold and drag to pan (or drag with the middle button)' },
  { keys: ['?'], action: 'help', help: 'this help' },
];

const SHIFTED_SYMBOLS = new Set(['?', '+']);

export function chord(ev) {
  // '?' is Shift+/ on most layouts; some keyboards (and synthetic events) report the unshifted key
  let key = ev.key === ' ' ? 'space' : ev.key === '/' && ev.shiftKey ? '?' : ev.key.toLowerCase();
  const parts = [];
  if (ev.ctrlKey || ev.metaKey) parts.push('ctrl');
  // Shift is part of a letter's chord; for symbols it is how the symbol was typed, not a modifier
  if (ev.shiftKey && !SHIFTED_SYMBOLS.has(key) && key.length === 1 && /[a-z0-9]/.test(key)) parts.push('shift');
  else if (ev.shiftKey && key.length > 1 && key !== 'shift') parts.push('shift');
  parts.push(key);
  return parts.join('+');
}

const BY_CHORD = new Map(KEYS.flatMap((k) => k.keys.map((c) => [c, k.action])));

export function actionFor(ev) {
  return BY_CHORD.get(chord(ev)) || null;
}

// true while the user types into a form field: keys belong to the field then
export function typing(ev) {
  const t = ev.target;
  return t instanceof HTMLElement && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName)
    && !['checkbox', 'radio', 'range', 'button', 'color'].includes(t.type));
}

const KEY_NAMES = { arrowup: '↑', arrowdown: '↓', backspace: 'Backspace', delete: 'Delete', enter: 'Enter', escape: 'Esc', space: 'Space' };

// 'ctrl+shift+z' -> 'Ctrl+Shift+Z', as people write keys
export function keyLabel(chordText) {
  if (chordText === '+') return '+';
  return chordText.split('+').map((part) => (part === '' ? '+' : part === 'ctrl' ? 'Ctrl' : part === 'shift' ? 'Shift'
    : KEY_NAMES[part] || part.toUpperCase())).join('+').replace('++', '+');
}

export function keyHint(action) {
  const entry = KEYS.find((k) => k.action === action);
  return entry ? keyLabel(entry.keys[0]).replace('Shift+', '⇧') : '';
}
