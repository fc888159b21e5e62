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


def run_cycle(session: Session, storage: Storage, config, batch: Batch, *, out=None, log=print, tile: int = 256,
              include_unreviewed: bool = False, **train_options) -> dict:
    """stitch → dataset → train from the current model → evaluate both on the frozen test split → promote if
    not worse; the outcome is recorded on the batch (shown by `cellloop report`)."""
    project = batch.project
    stitched = stitch_batch(session, storage, batch)
    cells = sum(s["cells"] for s in stitched)
    if not any(s["approved"] for s in stitched):
        raise LoopError(f"batch {batch.name!r} has no approved crops to learn from")
    log(f"stitched {sum(s['approved'] for s in stitched)} approved crops into {len(stitched)} images "
        f"({cells} cells, {sum(s['conflicts'] for s in stitched)} conflicts for QC)")
    out = Path(out) if out else Path(config.instance_dir) / "datasets" / project.name / f"{batch.name}.npz"
    data = build_dataset(session, storage, project, out, tile=tile, include_unreviewed=include_unreviewed)
    log(f"dataset {data['path']}: {data['splits']} tiles")
    status = batch_status(session, storage, batch)
    current = registry.current_model(session, storage, project)
    candidate, parent = train_version(session, storage, config, project, out, start="current", **train_options)
    log(f"trained {candidate.name} from {parent.name if parent else 'scratch'}")
    record = {"include_unreviewed": include_unreviewed, "dataset": data["path"], "sha256": data["sha256"], "splits": data["splits"], "cells": cells,
              "edits_per_cell": status["edits_per_cell"], "seconds_per_cell": status["seconds_per_cell"],
              "prelabel": batch.prelabel, "current": current.label, "candidate": candidate.name}
    if data["splits"]["test"] == 0:
        record.update(promoted=False, reason="no test tiles yet")
    else:
        cur = evaluate_choice(session, storage, config, project, current, out)
        cand = evaluate_choice(session, storage, config, project, registry.ModelChoice("version", candidate), out)
        promoted = promote_if_not_worse(session, project, candidate, cand["f1"], cur["f1"])
        record.update(current_f1=cur["f1"], candidate_f1=cand["f1"], promoted=promoted,
                      reason="not worse on the frozen test split" if promoted else "worse on the frozen test split")
        log(f"test F1: {current.label} {cur['f1']:.3f}, {candidate.name} {cand['f1']:.3f} -> "
            f"{'promoted' if promoted else 'kept ' + current.label}")
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
                     "test_tiles": (c.get("splits") or {}).get("test")})
    return rows
