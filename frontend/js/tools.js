// The tools of backend/edits as the editor offers them: how each is driven with the mouse (`input`) and
// which request it becomes. Keys live in keymap.js.
export const TOOLS = [
  { name: 'select', label: 'Select', input: 'click' },
  { name: 'paint', label: 'Brush', input: 'stroke' },
  { name: 'erase', label: 'Eraser', input: 'stroke' },
  { name: 'flood', label: 'Flood', input: 'click' },
  { name: 'threshold', label: 'Threshold', input: 'box' },
  { name: 'split', label: 'Split', input: 'seeds' },
  { name: 'autofit', label: 'Autofit', input: 'cell' },
  { name: 'shrink', label: 'Shrink', input: 'cell' },
  { name: 'grow', label: 'Grow', input: 'cell' },
  { name: 'trim', label: 'Trim', input: 'cell' },
  { name: 'merge', label: 'Replace', input: 'pair' },
  { name: 'swap', label: 'Swap', input: 'pair' },
  { name: 'delete', label: 'Delete', input: 'cell' },
  // from the model's maps of this crop (only where the task has them: info.assist)
  { name: 'assist_click', label: 'Assist', input: 'click', assist: true },
  { name: 'assist_box', label: 'Assist box', input: 'box', assist: true },
  { name: 'assist_accept', label: 'Accept', input: 'click', assist: true },
];

export const BY_NAME = Object.fromEntries(TOOLS.map((t) => [t.name, t]));

// Tools that act on one whole cell: the request for cell `label` (clicked at `point`, when clicked), with
// the active image channel where the tool reads the image.
export function cellEdit(tool, { label, point, channel, layer }) {
  switch (tool) {
    case 'autofit': return { layer, label, channel };
    case 'shrink': case 'grow': return { layer, label, n: 1 };
    // a click keeps the clicked piece; from the keyboard, the largest piece
    case 'trim': return point ? { layer, point } : { layer, label };
    case 'delete': return { layer, label };
    default: throw new Error(`${tool} is not a cell tool`);
  }
}
