"""``apply_edit``: validate a request and dispatch it to its tool."""

from __future__ import annotations

import numpy as np

from . import assist, brush, morph, region, relabel, segment
from .errors import EditError
from .params import EditContext

_TOOL_FUNCTIONS = {
    "paint": brush.paint,
    "erase": brush.erase,
    "flood": region.flood,
    "merge": relabel.merge,
    "swap": relabel.swap,
    "delete": relabel.delete,
    "split": segment.split,
    "threshold": segment.threshold,
    "autofit": segment.autofit,
    "grow": morph.grow,
    "shrink": morph.shrink,
    "trim": region.trim,
    "assist_click": assist.assist_click,
    "assist_box": assist.assist_box,
    "assist_accept": assist.assist_accept,
}
# tools that read the model's maps: the server passes them only to these
ASSIST_TOOLS = ("assist_click", "assist_box", "assist_accept")
TOOLS = tuple(_TOOL_FUNCTIONS)


def _check_arrays(labels, image):
    if not isinstance(labels, np.ndarray) or labels.ndim != 3:
        raise EditError("labels must be an (H, W, layers) array")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EditError(f"labels must hold integers, got {labels.dtype}")
    if image is None:
        return None
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[:2] != labels.shape[:2]:
        raise EditError(
            f"image of shape {image.shape} does not match labels of shape {labels.shape}")
    return image


def _check_maps(labels, maps):
    if maps is None:
        return None
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[:2] != labels.shape[:2] or maps.shape[2] < 2 * labels.shape[2]:
        raise EditError(f"maps of shape {maps.shape} do not match labels of shape {labels.shape}")
    return maps


def apply_edit(labels, image, tool, params, index=None, maps=None):
    """Run one edit and return its Patch; ``labels`` is left untouched.

    ``index`` (a LabelIndex kept in step with ``labels``) is only a speed-up: the result
    is the same with or without it. ``maps`` (H, W, 4), the model's maps of this crop (see
    ``assist.MAP_CHANNELS``), are read only by the assist tools.
    """
    if tool not in _TOOL_FUNCTIONS:
        raise EditError(f"unknown tool {tool!r}; known tools: {', '.join(TOOLS)}")
    if not isinstance(params, dict):
        raise EditError("params must be an object")
    image = _check_arrays(labels, image)
    if index is not None and tuple(index.shape) != labels.shape:
        raise EditError(f"index was built for labels of shape {index.shape}, not {labels.shape}")
    maps = _check_maps(labels, maps)
    return _TOOL_FUNCTIONS[tool](EditContext(labels, image, params, index, maps))
