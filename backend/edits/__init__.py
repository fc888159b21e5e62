"""The label editing engine: pure functions from (labels, image, params) to a Patch.

No web framework here: the API parses a request, calls ``apply_edit``, applies and stores
the returned Patch, and sends ``patch.to_bytes()`` to the browser. Tool parameters are
documented in the tool modules (brush, region, relabel, morph, segment, assist).
"""

from .assist import MAP_CHANNELS
from .engine import ASSIST_TOOLS, TOOLS, apply_edit
from .errors import EditError
from .index import LabelIndex, next_label_id
from .patch import Patch

__all__ = ["apply_edit", "ASSIST_TOOLS", "MAP_CHANNELS", "Patch", "EditError", "TOOLS", "LabelIndex", "next_label_id"]
