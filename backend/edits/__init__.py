"""The label editing engine: pure functions from (labels, image, params) to a Patch.

No web framework here: the API parses a request, calls ``apply_edit``, applies and stores
the returned Patch, and sends ``patch.to_bytes()`` to the browser. Tool parameters are
documented in the tool modules (brush, region, relabel, morph, segment).
"""

from .engine import TOOLS, apply_edit
from .errors import EditError
from .index import LabelIndex, next_label_id
from .patch import Patch

__all__ = ["apply_edit", "Patch", "EditError", "TOOLS", "LabelIndex", "next_label_id"]
