"""A paid crowd campaign on a batch: publish with replicas, gold tasks mixed in and the hardest crops routed to
experts; turn approved crops into gold; merge replicas by consensus (or send them to the experts first when they
disagree); score each worker; the per-(task, worker) report a lab pays, bonuses or blocks from."""
from __future__ import annotations

import math
import sys
from collections import defaultdict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.loop.batches import EDIT_REVISIONS
from backend.loop.common import LoopError, count_cells
from backend.store.models import (Batch, CropAgreement, GoldScore, GoldTruth, Review, Revision, Task, TaskEvent,
                                  TaskState, utcnow)
from backend.store.storage import Storage
from backend.tasks import TaskService
from backend.tasks import crowd as task_crowd
from backend.tasks.links import sign_task_token
from backend.tasks.transitions import Actor, transition

SYSTEM = Actor(ref="system")
AGREEMENT_THRESHOLD = 0.6
DONE = (TaskState.submitted, TaskState.in_review, TaskState.approved)


def _originals(session: Session, batch: Batch) -> list[Task]:
    """The batch's own crops (one per crop box, the first replica where there are several)."""
    tasks = session.scalars(select(Task).where(Task.batch_id == batch.id, Task.kind == "crop").order_by(Task.id))
    return [t for t in tasks if t.crowd_role is None or (t.crowd_role == task_crowd.REPLICA and t.crop_group == t.id)]


def route_hardest_to_experts(session: Session, batch: Batch, share: float) -> list[Task]:
    """The hardest ``share`` of the batch's untouched crops (by prelabel difficulty) straight to the experts'
    queue; those already routed count towards the share."""
    if not 0 <= share <= 1:
        raise LoopError("--experts-for must be a share between 0 and 1")
    crops = _originals(session, batch)
    if share == 0 or not crops:
        return []
    if any(t.difficulty is None for t in crops):
        raise LoopError(f"batch {batch.name!r} has crops without a difficulty score: prelabel it again (difficulty is "
                        f"computed at prelabel time)")
    routed = [t for t in crops if t.crowd_role is None and _routed(session, t)]
    want = int(math.ceil(share * len(crops))) - len(routed)
    candidates = sorted((t for t in crops if t.state in (TaskState.new, TaskState.prelabeled)
                         and t.crop_group is None), key=lambda t: (-t.difficulty, t.id))
    chosen = candidates[:max(want, 0)]
    for task in chosen:
        transition(session, task, "route_to_expert", SYSTEM, difficulty=task.difficulty)
    session.commit()
    return routed + chosen


def _routed(session: Session, task: Task) -> bool:
    return session.scalar(select(TaskEvent.id).where(TaskEvent.task_id == task.id,
                                                     TaskEvent.action == "route_to_expert").limit(1)) is not None


def publish_crowd(session: Session, storage: Storage, config, batch: Batch, out=None, base_url: str | None = None, *,
                  replicas: int = 1, gold_rate: float = 0.0, experts_for: float = 0.0, seed: int = 0) -> dict:
    """Publish the batch for the crowd: the hardest ``experts_for`` share to the experts, every other crop as
    ``replicas`` tasks, and gold tasks (``gold_rate`` of the links) mixed in; the links as the platform's CSV, in an
    order that does not give the gold away. Re-running tops up to the same numbers and prints every link again."""
    if batch.prelabel is None:
        raise LoopError(f"batch {batch.name!r} is not prelabelled yet: run `cellloop prelabel --batch {batch.name}` "
                        f"(use --model none for empty crops)")
    if not 1 <= replicas <= 10:
        raise LoopError("--replicas must be between 1 and 10")
    if not 0 <= gold_rate < 1:
        raise LoopError("--gold-rate must be at least 0 and below 1")
    expert = {t.id for t in route_hardest_to_experts(session, batch, experts_for)}
    svc = TaskService(session, storage)
    rng = np.random.default_rng(seed)
    crowd = [t for t in _originals(session, batch) if t.id not in expert]
    golds = list(session.scalars(select(GoldTruth).where(GoldTruth.project_id == batch.project_id)
                                 .order_by(GoldTruth.id)))
    have_gold = list(session.scalars(select(Task).where(Task.batch_id == batch.id,
                                                        Task.crowd_role == task_crowd.GOLD)))
    links = len(crowd) * replicas
    want_gold = int(math.ceil(gold_rate * links / (1 - gold_rate))) if gold_rate else 0
    if want_gold and not golds:
        raise LoopError(f"project {batch.project.name!r} has no gold crops yet: make some from expert-approved crops "
                        f"with `cellloop gold add --batch <an approved batch>`")
    # the copies (replicas and gold) are made in a shuffled order, so task ids do not sort gold after the rest
    jobs = [("replica", t) for t in crowd for _ in range(replicas - _replica_count(session, t))]
    used = {t.gold_id for t in have_gold}
    fresh = [g for g in golds if g.id not in used and g.source_task.batch_id != batch.id] or golds
    jobs += [("gold", fresh[i % len(fresh)]) for i in range(max(want_gold - len(have_gold), 0))]
    for i in rng.permutation(len(jobs)):
        kind, what = jobs[int(i)]
        if kind == "replica":
            task_crowd.add_replicas(svc, what, _replica_count(session, what) + 1)
        else:
            task_crowd.gold_task(svc, batch, what)
        session.flush()
    session.commit()
    tasks = [t for t in session.scalars(select(Task).where(Task.batch_id == batch.id, Task.kind == "crop"))
             if t.id not in expert and t.crowd_role != task_crowd.CONSENSUS]
    order = rng.permutation(len(tasks))
    base = (base_url or config.base_url).rstrip("/")
    print("task_id,image,y0,x0,y1,x1,state,url", file=out or sys.stdout)
    for i in order:
        t = tasks[int(i)]
        shown = t.source_image
        if t.crowd_role == task_crowd.GOLD:  # listed under the image its crop comes from, like any crop
            shown = session.get(GoldTruth, t.gold_id).source_task.source_image
        image_name = shown.name if shown is not None else ""
        token = sign_task_token(config.secret_key, t.id, t.token_nonce)
        print(f"{t.id},{image_name},{t.y0},{t.x0},{t.y1},{t.x1},{t.state.value},{base}/task/{token}",
              file=out or sys.stdout)
    if batch.published_at is None:
        batch.published_at = utcnow()
    session.commit()
    return {"links": len(tasks), "crops": len(crowd), "replicas": replicas, "experts": len(expert),
            "gold": sum(t.crowd_role == task_crowd.GOLD for t in tasks)}


def has_crowd_tasks(session: Session, batch: Batch) -> bool:
    """Whether the batch was published with replicas, gold or experts (its links must be listed by publish_crowd)."""
    return session.scalar(select(Task.id).where(Task.batch_id == batch.id, Task.crowd_role.is_not(None))
                          .limit(1)) is not None or session.scalar(
        select(TaskEvent.id).join(Task, Task.id == TaskEvent.task_id).where(
            Task.batch_id == batch.id, TaskEvent.action == "route_to_expert").limit(1)) is not None


def _replica_count(session: Session, task: Task) -> int:
    if task.crop_group is None:
        return 1
    return len(list(session.scalars(select(Task.id).where(Task.crop_group == task.crop_group,
                                                          Task.crowd_role == task_crowd.REPLICA))))


def add_gold(session: Session, storage: Storage, batch: Batch) -> int:
    """Every expert-approved crop of the batch not yet gold becomes a gold truth (merged consensus crops are no
    expert's work and gold tasks are no truth of their own: neither is taken)."""
    svc = TaskService(session, storage)
    approved = session.scalars(select(Task).where(Task.batch_id == batch.id, Task.state == TaskState.approved,
                                                  Task.kind == "crop").order_by(Task.id))
    known = set(session.scalars(select(GoldTruth.source_task_id)))
    made = 0
    for task in approved:
        if task.id in known or task.crowd_role in (task_crowd.GOLD, task_crowd.CONSENSUS):
            continue
        reviewed = session.scalar(select(Review.id).where(Review.task_id == task.id, Review.verdict == "approved"))
        if reviewed is None:
            continue
        task_crowd.make_gold_truth(svc, task)
        made += 1
    session.commit()
    if not made and not known:
        raise LoopError(f"batch {batch.name!r} has no expert-approved crops to make gold from yet")
    return made


def _replica_groups(session: Session, batch: Batch) -> dict[int, list[Task]]:
    groups: dict[int, list[Task]] = defaultdict(list)
    for t in session.scalars(select(Task).where(Task.batch_id == batch.id, Task.crowd_role == task_crowd.REPLICA)
                             .order_by(Task.id)):
        groups[t.crop_group].append(t)
    return dict(groups)


def replica_agreement(replicas: list[np.ndarray], start: np.ndarray) -> list[tuple[int, int, float]]:
    """Pairwise F1 of the replicas, averaged over the layers any of them corrected from ``start`` (their common
    revision 0)."""
    from pipeline.consensus import pairwise_agreement

    layers = task_crowd.corrected_layers(start, *replicas)
    per_layer = [pairwise_agreement([r[..., layer] for r in replicas]) for layer in layers]
    return [(i, j, float(np.mean([pairs[n][2] for pairs in per_layer])))
            for n, (i, j, _) in enumerate(per_layer[0])]


def run_consensus(session: Session, storage: Storage, batch: Batch, *, threshold: float = AGREEMENT_THRESHOLD) -> dict:
    """For every crop whose replicas are all submitted: store their pairwise agreement; merge them into one
    approved consensus task when it reaches ``threshold``, else leave them for an expert (first in the queue)."""
    from pipeline.consensus import mean_agreement, merge_replicas

    if not 0 <= threshold <= 1:
        raise LoopError("--threshold must be between 0 and 1")
    svc = TaskService(session, storage)
    groups = _replica_groups(session, batch)
    if not groups:
        raise LoopError(f"batch {batch.name!r} has no replicas: publish it with --replicas 2 or more")
    done = set(session.scalars(select(CropAgreement.crop_group).where(CropAgreement.batch_id == batch.id)))
    summary = {"merged": 0, "expert": 0, "waiting": 0, "already": 0, "agreements": []}
    for group, replicas in sorted(groups.items()):
        if group in done:
            summary["already"] += 1
            continue
        if len(replicas) < 2 or any(t.state not in DONE for t in replicas):
            summary["waiting"] += 1
            continue
        labels = [svc.labels(t) for t in replicas]
        pairs = replica_agreement(labels, svc.labels_at(replicas[0], 0))
        agreement = mean_agreement(pairs)
        row = CropAgreement(crop_group=group, batch_id=batch.id, agreement=agreement,
                            pairs=[[replicas[i].id, replicas[j].id, f] for i, j, f in pairs],
                            outcome="merged" if agreement >= threshold else "expert")
        if row.outcome == "merged":
            merged = merge_replicas(labels)
            task = task_crowd.copy_task(svc, batch, replicas[0], merged, role=task_crowd.CONSENSUS, group=group,
                                        params={"consensus": [t.id for t in replicas], "agreement": agreement})
            session.flush()
            transition(session, task, "accept_consensus", Actor(ref="consensus"), replicas=[t.id for t in replicas],
                       agreement=agreement)
            row.consensus_task_id = task.id
        session.add(row)
        session.commit()
        summary[row.outcome] += 1
        summary["agreements"].append(agreement)
    return summary


# --- scores and the platform's report --------------------------------------------------------------------------

def _agreement_by_task(session: Session, task_ids) -> dict[int, float]:
    """Each replica's mean F1 against the other replicas of its crop."""
    per: dict[int, list[float]] = defaultdict(list)
    for row in session.scalars(select(CropAgreement)):
        for a, b, f in row.pairs:
            per[a].append(f)
            per[b].append(f)
    return {t: float(np.mean(per[t])) for t in task_ids if per.get(t)}


def _scope(session: Session, batch: Batch | None = None, project=None) -> list[Task]:
    query = select(Task).where(Task.kind == "crop").order_by(Task.id)
    if batch is not None:
        query = query.where(Task.batch_id == batch.id)
    elif project is not None:
        query = query.join(Task.batch).where(Batch.project_id == project.id)
    return list(session.scalars(query))


def crowd_rows(session: Session, storage: Storage, batch: Batch | None = None, project=None) -> list[dict]:
    """One row per (task, worker) who opened, edited or submitted it: seconds open, cells, edits, the gold score
    where the task is gold, agreement with the other replicas, and the verdict (accepted / rejected / merged /
    pending)."""
    svc = TaskService(session, storage)
    tasks = [t for t in _scope(session, batch, project) if t.crowd_role != task_crowd.CONSENSUS]
    ids = [t.id for t in tasks]
    if not ids:
        return []
    agreement = _agreement_by_task(session, ids)
    gold = {g.task_id: g for g in session.scalars(select(GoldScore).where(GoldScore.task_id.in_(ids))
                                                  .order_by(GoldScore.id))}
    edits: dict[tuple, int] = defaultdict(int)
    for task_id, ref in session.execute(select(Revision.task_id, Revision.author_ref).where(
            Revision.task_id.in_(ids), Revision.action.in_(EDIT_REVISIONS))):
        edits[(task_id, ref)] += 1
    seconds: dict[tuple, float] = defaultdict(float)
    for task_id, ref, s in session.execute(select(TaskEvent.task_id, TaskEvent.actor_ref, TaskEvent.time_open_s).where(
            TaskEvent.task_id.in_(ids), TaskEvent.action == "submit")):
        seconds[(task_id, ref)] += s or 0.0
    verdicts = {}
    for r in session.scalars(select(Review).where(Review.task_id.in_(ids)).order_by(Review.id)):
        verdicts[r.task_id] = r.verdict
    merged = {g for g in session.scalars(select(CropAgreement.crop_group).where(CropAgreement.outcome == "merged"))}
    rows = []
    for t in tasks:
        workers = sorted({ref for (tid, ref) in list(edits) + list(seconds) if tid == t.id and ref}
                         | ({t.assignee_ref} if t.assignee_ref else set()))
        if not workers:
            continue
        cells = count_cells(svc.labels(t)) if t.state in DONE or t.state is TaskState.rejected else None
        verdict = ({"approved": "accepted", "rejected": "rejected"}.get(verdicts.get(t.id))
                   or ("merged" if t.crop_group in merged else "pending" if t.state in DONE else "open"))
        for ref in workers:
            rows.append({"task_id": t.id, "crop": t.crop_group or t.id, "batch": t.batch.name,
                         "worker": _platform_id(ref), "gold": t.crowd_role == task_crowd.GOLD,
                         "state": t.state.value, "time_open_s": round(seconds.get((t.id, ref), 0.0), 1),
                         "cells": cells, "edits": edits.get((t.id, ref), 0),
                         "gold_f1": round(gold[t.id].f1, 4) if t.id in gold and gold[t.id].worker_ref == ref else None,
                         "agreement": round(agreement[t.id], 4) if t.id in agreement else None,
                         "verdict": verdict})
    return rows


def _platform_id(ref: str) -> str:
    return ref[len(task_crowd.WORKER_PREFIX):] if task_crowd.is_crowd_worker(ref) else ref


def worker_scores(session: Session, storage: Storage, batch: Batch | None = None, project=None) -> list[dict]:
    """Per worker: gold F1 (mean, count), agreement with other replicas, seconds and edits per cell, rejections."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in crowd_rows(session, storage, batch, project):
        by[row["worker"]].append(row)
    out = []
    for worker, rows in sorted(by.items()):
        golds = [r["gold_f1"] for r in rows if r["gold_f1"] is not None]
        agree = [r["agreement"] for r in rows if r["agreement"] is not None]
        cells = sum(r["cells"] or 0 for r in rows)
        out.append({"worker": worker, "tasks": len(rows), "gold_f1": round(float(np.mean(golds)), 4) if golds else None,
                    "gold_n": len(golds), "agreement": round(float(np.mean(agree)), 4) if agree else None,
                    "seconds_per_cell": round(sum(r["time_open_s"] for r in rows) / cells, 3) if cells else None,
                    "edits_per_cell": round(sum(r["edits"] for r in rows) / cells, 3) if cells else None,
                    "rejections": sum(r["verdict"] == "rejected" for r in rows)})
    return out
