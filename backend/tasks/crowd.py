"""Crowd quality on the task floor: replicas of a crop (one task each, with its own token, history and state),
the rule that one worker never holds two replicas of one crop, gold tasks (honeypot copies of an expert-approved
crop) and their scoring on submit. No Flask here.

A worker must not be able to tell a gold task from any other: it is an ordinary crop task of the batch (kind
"crop", a crop box of a project image, the crop's prelabel as revision 0); only ``crowd_role`` and ``gold_id``,
which no worker-facing response carries, say otherwise.
"""
from __future__ import annotations

import numpy as np
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from backend.store.arrays import decode_array, encode_array
from backend.store.models import Batch, GoldScore, GoldTruth, Revision, Task
from backend.tasks.states import TransitionError

REPLICA, GOLD, CONSENSUS = "replica", "gold", "consensus"
# worker refs of crowd workers (the platform's id); "link:N" (a link without one) and users are not crowd workers
WORKER_PREFIX = "worker:"


class WorkerHasReplica(TransitionError):
    """The worker already holds another replica of this crop: each replica must come from a different worker."""

    def __init__(self, task: Task):
        super().__init__("assign", task.state)
        self.args = ("this worker already has another copy of this crop; each copy needs a different worker",)


def is_crowd_worker(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(WORKER_PREFIX)


def no_other_replica_of(task: Task, ref: str):
    """SQL condition for the assign update: no other task of the task's crop group is this worker's. Part of the
    conditional update itself, so two opens racing on two replicas cannot both hand them to one worker."""
    other = aliased(Task)
    return ~exists(select(other.id).where(other.crop_group == task.crop_group, other.id != task.id,
                                          other.assignee_ref == ref))


def check_worker_may_take(db: Session, task: Task, ref: str | None) -> list:
    """Refuse (WorkerHasReplica) when ``ref`` already holds another replica of the task's crop; the condition to add
    to the assign's update otherwise (empty for tasks without replicas and actors that are not crowd workers)."""
    if task.crop_group is None or not is_crowd_worker(ref):
        return []
    # the crop's first task row is the group's lock: on PostgreSQL two assigns of one crop's replicas wait for each
    # other here, so the check below and the update's condition see the other's committed assignment (SQLite
    # serialises writers anyway and ignores FOR UPDATE)
    db.execute(select(Task.id).where(Task.id == task.crop_group).with_for_update())
    taken = db.scalar(select(Task.id).where(Task.crop_group == task.crop_group, Task.id != task.id,
                                           Task.assignee_ref == ref).limit(1))
    if taken is not None:
        raise WorkerHasReplica(task)
    return [no_other_replica_of(task, ref)]


def first_revision(db: Session, task: Task) -> Revision:
    return db.scalar(select(Revision).where(Revision.task_id == task.id, Revision.number == 0))


def copy_task(svc, batch: Batch, source: Task, labels: np.ndarray, *, role: str, group: int | None,
              gold_id: int | None = None, params: dict | None = None) -> Task:
    """A new task of ``batch`` showing ``source``'s crop (its image, box, model maps and difficulty) with ``labels``
    as revision 0 (the action and params of the source's revision 0, so its history starts the same way)."""
    first = first_revision(svc.db, source)
    task = svc.create_task(batch, source.box, svc.image(source), labels, action=first.action)
    task.image_id = source.image_id
    task.crop_group = group
    task.crowd_role = role
    task.gold_id = gold_id
    task.maps_key, task.maps_model = source.maps_key, source.maps_model
    task.difficulty, task.difficulty_detail = source.difficulty, source.difficulty_detail
    svc.db.flush()
    rev0 = first_revision(svc.db, task)
    rev0.params = dict(first.params or {}) if params is None else params
    return task


def add_replicas(svc, task: Task, k: int) -> list[Task]:
    """Make ``task`` one of ``k`` replicas of its crop (adding the copies it lacks); all of them, first the task.
    Copies start from the task's first revision, so every worker corrects the same prelabel."""
    if task.crop_group is None:
        task.crop_group = task.id
        task.crowd_role = REPLICA
    group = list(svc.db.scalars(select(Task).where(Task.crop_group == task.crop_group,
                                                   Task.crowd_role == REPLICA).order_by(Task.id)))
    if len(group) < k:
        start = svc.labels_at(task, 0)
        group += [copy_task(svc, task.batch, task, start, role=REPLICA, group=task.crop_group)
                  for _ in range(k - len(group))]
    return group


# --- gold -------------------------------------------------------------------------------------------------------

def make_gold_truth(svc, approved: Task) -> GoldTruth:
    """Keep an approved crop as a gold truth: its approved labels are the truth, its revision 0 what a worker will
    start from."""
    base = f"projects/{approved.batch.project_id}/gold/{approved.id}"
    truth_key, start_key = f"{base}/truth.npy.gz", f"{base}/start.npy.gz"
    svc.storage.put(truth_key, encode_array(svc.labels(approved)))
    svc.storage.put(start_key, encode_array(svc.labels_at(approved, 0)))
    gold = GoldTruth(project_id=approved.batch.project_id, source_task_id=approved.id, truth_key=truth_key,
                     start_key=start_key)
    svc.db.add(gold)
    svc.db.flush()
    return gold


def gold_task(svc, batch: Batch, gold: GoldTruth) -> Task:
    """A honeypot in ``batch``: a crop task like the batch's own, starting from the gold crop's prelabel."""
    source = svc.db.get(Task, gold.source_task_id)
    start = decode_array(svc.storage.get(gold.start_key), max_pixels=None)
    task = copy_task(svc, batch, source, start, role=GOLD, group=None, gold_id=gold.id)
    # tied to no image: stitching, batch images and image QC never see it (its crop is the source's already)
    task.image_id = None
    return task


def gold_truth_labels(svc, gold: GoldTruth) -> np.ndarray:
    return decode_array(svc.storage.get(gold.truth_key), max_pixels=None)


def score_against(truth: np.ndarray, labels: np.ndarray) -> tuple[list[float], dict]:
    """F1 of each layer of ``labels`` against ``truth`` (pipeline.metrics, the project's F1), and the counts."""
    from pipeline.metrics import object_accuracy

    f1s, detail = [], {}
    for layer in range(truth.shape[-1]):
        result = object_accuracy(truth[..., layer], labels[..., layer])
        f1s.append(float(result["f1"]))
        detail[str(layer)] = {k: result[k] for k in ("n_true", "n_pred", "correct", "false_positive",
                                                    "false_negative", "split", "merge", "catastrophe")}
    return f1s, detail


def corrected_layers(start: np.ndarray, *labels: np.ndarray) -> list[int]:
    """The layers any of ``labels`` changed from ``start`` (a crop annotated for whole cells only leaves the
    nuclear prelabel as it was: agreeing on it says nothing); the whole-cell layer when none changed."""
    return [layer for layer in range(start.shape[-1])
            if any((l[..., layer] != start[..., layer]).any() for l in labels)] or [0]


def score_gold_submit(svc, task: Task, worker_ref: str | None) -> GoldScore | None:
    """On submit of a gold task: its labels scored against the truth and stored (in the caller's transaction).
    Every layer's F1 is kept; ``f1`` is the mean over the layers the expert corrected in the truth."""
    if task.crowd_role != GOLD or task.gold_id is None:
        return None
    gold = svc.db.get(GoldTruth, task.gold_id)
    truth = gold_truth_labels(svc, gold)
    f1s, detail = score_against(truth, svc.labels(task))
    start = decode_array(svc.storage.get(gold.start_key), max_pixels=None)
    detail["scored_layers"] = corrected_layers(start, truth)
    scored = [f1s[layer] for layer in detail["scored_layers"]]
    row = GoldScore(task_id=task.id, worker_ref=worker_ref, revision=task.revision, f1=float(np.mean(scored)),
                    f1_layers=f1s, detail=detail)
    svc.db.add(row)
    return row


def not_gold():
    """SQL condition: the task is no honeypot (gold work never enters stitching, datasets or the review queue)."""
    return Task.crowd_role.is_distinct_from(GOLD)


# --- review comments pinned to a place ------------------------------------------------------------------------

def check_pin(pin, task: Task) -> dict | None:
    """A review comment's pin, checked: {"point": [y, x]} inside the crop, or {"cell": id, "layer": 0|1}; None
    (the whole crop). ValueError (a 400) otherwise."""
    if pin is None:
        return None
    if not isinstance(pin, dict):
        raise ValueError("'pin' must be an object: {\"point\": [y, x]} or {\"cell\": id, \"layer\": 0|1}")
    h, w = task.shape
    if set(pin) == {"point"}:
        point = pin["point"]
        if (not isinstance(point, list) or len(point) != 2 or not all(type(v) is int for v in point)
                or not (0 <= point[0] < h and 0 <= point[1] < w)):
            raise ValueError(f"'pin.point' must be [y, x] integers inside the {h}x{w} crop")
        return {"point": list(point)}
    if set(pin) in ({"cell"}, {"cell", "layer"}):
        cell, layer = pin["cell"], pin.get("layer", 0)
        if type(cell) is not int or not 0 < cell < 2 ** 31 or layer not in (0, 1) or type(layer) is not int:
            raise ValueError("'pin.cell' must be a positive cell id and 'pin.layer' 0 or 1")
        return {"cell": cell, "layer": layer}
    raise ValueError("'pin' must be {\"point\": [y, x]} or {\"cell\": id, \"layer\": 0|1}")


# --- what flows on ------------------------------------------------------------------------------------------------

def stitchable(tasks: list[Task]) -> list[Task]:
    """Of approved crop tasks, the ones whose labels go into the image: no gold task (a worker's answer to a
    known question, never training data), and of each replicated crop one task: its consensus when there is one,
    else the replica an expert approved last. Order kept."""
    chosen: dict[int, Task] = {}
    for t in tasks:
        if t.crop_group is None or t.crowd_role == GOLD:
            continue
        best = chosen.get(t.crop_group)
        if best is None or _rank(t) > _rank(best):
            chosen[t.crop_group] = t
    keep = {t.id for t in chosen.values()}
    return [t for t in tasks if t.crowd_role != GOLD and (t.crop_group is None or t.id in keep)]


def _rank(task: Task) -> tuple:
    from backend.tasks.transitions import aware

    reviewed = aware(task.reviewed_at)
    return (task.crowd_role == CONSENSUS, reviewed.timestamp() if reviewed else 0.0, task.id)


# --- the reviewer queue ---------------------------------------------------------------------------------------

def review_risk(db: Session, tasks: list[Task]) -> dict[int, dict]:
    """{task id: {"risk": r, "why": [...]}} for the reviewer queue: how likely the task's labels are wrong. The
    highest of: 1 - its agreement with the other replicas, 1 - its worker's mean gold F1, its prelabel difficulty;
    replicas whose crop consensus refused to merge (too little agreement) come before everything (risk + 1)."""
    from backend.store.models import CropAgreement

    groups = {t.crop_group for t in tasks if t.crop_group is not None}
    rows = list(db.scalars(select(CropAgreement).where(CropAgreement.crop_group.in_(groups)))) if groups else []
    agreement: dict[int, list[float]] = {}
    disputed = {r.crop_group for r in rows if r.outcome == "expert"}
    for r in rows:
        for a, b, f in r.pairs:
            agreement.setdefault(a, []).append(f)
            agreement.setdefault(b, []).append(f)
    refs = {t.assignee_ref for t in tasks if t.assignee_ref}
    gold: dict[str, list[float]] = {}
    if refs:
        for ref, f1 in db.execute(select(GoldScore.worker_ref, GoldScore.f1).where(GoldScore.worker_ref.in_(refs))):
            gold.setdefault(ref, []).append(f1)
    out = {}
    for t in tasks:
        parts = {}
        if t.id in agreement:
            parts["low agreement"] = 1.0 - float(np.mean(agreement[t.id]))
        if t.assignee_ref in gold:
            parts["low-scoring worker"] = 1.0 - float(np.mean(gold[t.assignee_ref]))
        if t.difficulty is not None:
            parts["hard crop"] = float(t.difficulty)
        risk = max(parts.values()) if parts else 0.0
        if t.crop_group in disputed:
            risk += 1.0
            parts["replicas disagree"] = 1.0
        out[t.id] = {"risk": round(risk, 4), "why": sorted(parts, key=lambda k: -parts[k])}
    return out


def merged_groups(db: Session) -> set[int]:
    """Crops whose replicas consensus merged: those replicas need no review of their own."""
    from backend.store.models import CropAgreement

    return set(db.scalars(select(CropAgreement.crop_group).where(CropAgreement.outcome == "merged")))
