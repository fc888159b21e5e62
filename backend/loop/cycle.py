"""One whole cycle (stitch → dataset → train → evaluate → promote) and the per-batch report."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from backend.loop import registry
from backend.loop.batches import batch_status
from backend.loop.common import LoopError
from backend.loop.dataset import build_dataset
from backend.loop.stitch import stitch_batch
from backend.loop.training import evaluate_choice, promote_if_not_worse, train_version
from backend.store.models import Batch, Project
from backend.store.storage import Storage


# below this many cells in the test split, `cycle` leaves promotion to the admin
MIN_TEST_CELLS = 100


def run_cycle(session: Session, storage: Storage, config, batch: Batch, *, out=None, log=print, tile: int = 256,
              block: int | None = None, include_unreviewed: bool = False, partial: float | None = None,
              min_test_cells: int = MIN_TEST_CELLS, **train_options) -> dict:
    """stitch → dataset → train from the current model → evaluate both on the frozen test split (each run as
    prelabel runs it) → promote if strictly better on at least ``min_test_cells`` test cells (default
    MIN_TEST_CELLS); the outcome is recorded on the batch (shown by `cellloop report`)."""
    if int(min_test_cells) < 1:
        raise LoopError(f"--min-test-cells must be at least 1, got {min_test_cells}")
    project = batch.project
    stitched = stitch_batch(session, storage, batch)
    cells = sum(s["cells"] for s in stitched)
    if not any(s["approved"] for s in stitched):
        raise LoopError(f"batch {batch.name!r} has no approved crops to learn from")
    log(f"stitched {sum(s['approved'] for s in stitched)} approved crops into {len(stitched)} images "
        f"({cells} cells, {sum(s['conflicts'] for s in stitched)} conflicts for QC)")
    out = Path(out) if out else Path(config.instance_dir) / "datasets" / project.name / f"{batch.name}.npz"
    data = build_dataset(session, storage, project, out, tile=tile, block=block, include_unreviewed=include_unreviewed,
                         partial=partial)
    log(f"dataset {data['path']}: {data['splits']} tiles")
    status = batch_status(session, storage, batch)
    done = sum(status["states"].get(s, 0) for s in ("submitted", "in_review", "approved"))
    if status["nuclear_corrected_crops"] < done:
        log(f"nuclear layer corrected in {status['nuclear_corrected_crops']} of {done} crops: the nuclear head also "
            f"learns the others' uncorrected prelabel nuclei")
    current = registry.current_model(session, storage, project)
    candidate, parent = train_version(session, storage, config, project, out, start="current", **train_options)
    log(f"trained {candidate.name} from {parent.name if parent else 'scratch'}")
    record = {"include_unreviewed": include_unreviewed, "partial_tiles": data["partial_tiles"], "dataset": data["path"], "sha256": data["sha256"], "splits": data["splits"], "cells": cells,
              "edits_per_cell": status["edits_per_cell"], "seconds_per_cell": status["seconds_per_cell"],
              "nuclear_corrected_crops": status["nuclear_corrected_crops"], "crops_done": done,
              "prelabel": batch.prelabel, "current": current.label, "candidate": candidate.name}
    if data["splits"]["test"] == 0:
        record.update(promoted=False, reason="no test tiles yet")
    else:
        cur = evaluate_choice(session, storage, config, project, current, out)
        cand = evaluate_choice(session, storage, config, project, registry.ModelChoice("version", candidate), out)
        record.update(current_f1=cur["f1"], candidate_f1=cand["f1"], test_cells=cur["n_true"])
        record["min_test_cells"] = int(min_test_cells)
        if cur["n_true"] < min_test_cells:
            # a difference on a few dozen cells is noise: the admin decides (`cellloop models promote`)
            promoted = False
            reason = (f"too few test cells ({cur['n_true']} < {min_test_cells}): not promoted; "
                      f"`cellloop models promote {candidate.name}` to overrule")
        else:
            promoted = promote_if_not_worse(session, project, candidate, cand["f1"], cur["f1"])
            reason = ("better on the frozen test split" if promoted else
                      "tied on the frozen test split" if cand["f1"] == cur["f1"] else "worse on the frozen test split")
        record.update(promoted=promoted, reason=reason)
        log(f"test F1 on {cur['n_true']} cells: {current.label} {cur['f1']:.3f}, {candidate.name} {cand['f1']:.3f} "
            f"-> {'promoted' if promoted else 'kept ' + current.label + ' (' + reason + ')'}")
    batch.cycle = record
    session.commit()
    return record


def report(session: Session, project: Project) -> list[dict]:
    from backend.loop.qc import QC_BATCH

    rows = []
    for batch in sorted((b for b in project.batches if b.name != QC_BATCH), key=lambda b: b.id):
        c = batch.cycle or {}
        rows.append({"batch": batch.name, "prelabel": batch.prelabel or "-", "prelabel_f1": c.get("current_f1"),
                     "cells": c.get("cells"), "edits_per_cell": c.get("edits_per_cell"),
                     "seconds_per_cell": c.get("seconds_per_cell"), "trained": c.get("candidate"),
                     "trained_f1": c.get("candidate_f1"), "promoted": c.get("promoted"),
                     "test_tiles": (c.get("splits") or {}).get("test"), "test_cells": c.get("test_cells"),
                     "reason": c.get("reason")})
    return rows
