"""The human-in-the-loop cycle, driven by an admin: batch → prelabel → publish → (annotate, review) → stitch →
dataset → train → evaluate → promote. Each step reads and records rows and arrays here and computes with
`pipeline/`; each is idempotent and resumable (re-running skips what is done, a crash loses at most the image in
progress). Expected failures raise `LoopError` (one line for the CLI)."""
from backend.loop.batches import batch_status, create_batch, publish_batch
from backend.loop.common import LoopError, batch_images, get_batch
from backend.loop.cycle import MIN_TEST_CELLS, report, run_cycle
from backend.loop.dataset import build_dataset
from backend.loop.prelabel import load_mesmer, prelabel_batch, segment_image_job
from backend.loop.stitch import stitch_batch, stitched_labels
from backend.loop.training import evaluate_choice, promote_if_not_worse, train_version

__all__ = ["LoopError", "MIN_TEST_CELLS", "batch_images", "batch_status", "build_dataset", "create_batch", "evaluate_choice",
           "get_batch", "load_mesmer", "prelabel_batch", "promote_if_not_worse", "publish_batch", "report", "run_cycle",
           "segment_image_job", "stitch_batch", "stitched_labels", "train_version"]
