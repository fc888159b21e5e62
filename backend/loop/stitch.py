"""Stitch: approved crops back into whole-image labels, with the conflicts listed for the expert's QC."""
from __future__ import annotations

import json
import secrets

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.loop.common import batch_images, count_cells
from backend.loop.qc import refresh_qc
from backend.store.arrays import decode_array, encode_array
from backend.store.models import Batch, Image, Task, TaskState, utcnow
from backend.store.storage import Storage
from backend.tasks.crowd import stitchable


def stitch_batch(session: Session, storage: Storage, batch: Batch) -> list[dict]:
    """Approved crops back into whole-image labels, for every image of the batch (approved crops of earlier
    batches of the same image included); the conflict list goes beside the labels for expert QC."""
    from pipeline.stitch import stitch_crops

    from backend.tasks import TaskService

    svc = TaskService(session, storage)
    summary = []
    for image in batch_images(session, batch):
        in_batch = session.scalar(select(func.count(Task.id)).where(Task.batch_id == batch.id,
                                                                    Task.image_id == image.id))
        approved = list(session.scalars(select(Task).where(Task.image_id == image.id,
                                                           Task.state == TaskState.approved,
                                                           Task.kind == "crop")
                                        .order_by(Task.batch_id, Task.id)))
        approved = stitchable(approved)  # no gold work; one task per replicated crop (its consensus first)
        if not approved:
            summary.append({"image": image.name, "approved": 0, "crops": in_batch, "cells": 0, "conflicts": 0})
            continue
        # newer approved work (a later batch) wins where crops of several batches cover the same pixels
        result = stitch_crops((image.height, image.width), [(t.box, svc.labels(t)) for t in approved],
                              priority=[t.batch_id for t in approved])
        for conflict in result.conflicts:
            conflict["tasks"] = [approved[k].id for k in conflict["crops"]]
        base = f"projects/{image.project_id}/images/{image.id}"
        token = secrets.token_hex(4)
        labels_key = f"{base}/labels/{batch.id}-{token}.npy.gz"
        coverage_key = f"{base}/coverage/{batch.id}-{token}.npy.gz"
        conflicts_key = f"{base}/stitch/{batch.id}-{token}-conflicts.json"
        storage.put(labels_key, encode_array(result.labels))
        storage.put(coverage_key, encode_array(result.coverage.astype(np.uint8)))
        storage.put(conflicts_key, json.dumps(result.conflicts, indent=1).encode())
        image.labels_key, image.coverage_key, image.stitched_at = labels_key, coverage_key, utcnow()
        session.commit()
        qc = refresh_qc(session, storage, image, result.labels, result.conflicts, [list(t.box) for t in approved],
                        source=batch.name)
        summary.append({"image": image.name, "approved": sum(t.batch_id == batch.id for t in approved),
                        "crops": in_batch, "cells": count_cells(result.labels), "coverage": float(result.coverage.mean()),
                        "conflicts": len(result.conflicts), "conflicts_key": conflicts_key,
                        "conflict_list": result.conflicts, **qc})
    batch.stitched_at = utcnow()
    session.commit()
    return summary


def stitched_labels(storage: Storage, image: Image) -> tuple[np.ndarray, np.ndarray]:
    labels = decode_array(storage.get(image.labels_key), max_pixels=None)
    coverage = decode_array(storage.get(image.coverage_key), max_pixels=None).astype(bool)
    return labels, coverage
