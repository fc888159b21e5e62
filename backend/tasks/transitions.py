"""The one way a task row changes: a conditional update. It happens only if the row is still as this request saw it
(its state, and its revision when the caller names one), so of two racing requests exactly one wins and the other
learns what the task looks like now (StaleRevision or TransitionError, 409 in the API). Edits, the prelabel write,
open, submit and review all go through here. Nothing is committed here; the caller commits.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from backend.store.models import Task, TaskEvent, User
from backend.tasks import states
from backend.tasks.crowd import check_worker_may_take
from backend.tasks.states import TransitionError


class StaleRevision(Exception):
    """The edit was based on an older revision than the task's current one (the API answers 409)."""

    def __init__(self, base: int | None, current: int):
        super().__init__(f"revision {base} is stale: the task is at revision {current}")
        self.base = base
        self.current = current


@dataclass(frozen=True)
class Actor:
    """Who acts: a logged-in user, or a crowd worker known only by the platform's reference."""

    user: User | None = None
    ref: str | None = None

    @property
    def reviewer(self) -> bool:
        return self.user is not None and self.user.role.value in ("reviewer", "admin")


def now() -> datetime:
    return datetime.now(timezone.utc)


def aware(ts: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def conditional_update(db: Session, task: Task, where: list, values: dict) -> bool:
    """Write ``values`` to the task's row only where ``where`` still holds; mirror them on the loaded object (without
    marking it dirty) when it did. Returns whether the row moved."""
    # on the session's connection (same transaction), as a Core statement: the ORM's bulk-update machinery around a
    # session.execute() costs more than the round trip itself
    moved = db.connection().execute(update(Task.__table__).where(Task.id == task.id, *where).values(**values)).rowcount
    if moved == 1:
        for name, value in values.items():
            set_committed_value(task, name, value)
    return moved == 1


_TASKS = Task.__table__
# the edit's own conditional update, built once (an edit runs it every time; building and keying a statement costs
# about as much as running it): the task moves from ``base`` to ``number`` only while at ``base``, in a state the actor
# may edit and, in the second form, with the labels epoch the change read
_ADVANCE = update(_TASKS).where(_TASKS.c.id == bindparam("task_id"), _TASKS.c.revision == bindparam("base"),
                                _TASKS.c.state.in_(bindparam("editable", expanding=True))) \
    .values(revision=bindparam("number"))
_ADVANCE_AT_EPOCH = _ADVANCE.where(_TASKS.c.labels_epoch == bindparam("epoch"))


def advance_revision(db: Session, task: Task, base: int, editable, epoch: int | None = None) -> bool:
    """``conditional_update`` of an edit: move the task from revision ``base`` to the next one while it is still at
    ``base``, in one of the ``editable`` states and (when given) at labels epoch ``epoch``. Returns whether it moved."""
    params = {"task_id": task.id, "base": base, "editable": list(editable), "number": base + 1}
    if epoch is not None:
        params["epoch"] = epoch
    moved = db.connection().execute(_ADVANCE if epoch is None else _ADVANCE_AT_EPOCH, params).rowcount
    if moved == 1:
        set_committed_value(task, "revision", base + 1)
    return moved == 1


def set_columns(db: Session, task: Task, **values) -> None:
    """Write columns of a task whose row this transaction already holds (no condition needed)."""
    conditional_update(db, task, [], values)


def raise_lost_race(db: Session, task: Task, action: str, base_revision: int | None) -> None:
    """After a conditional update matched no row: say what the task looks like now (409 either way)."""
    state, revision = db.execute(select(Task.state, Task.revision).where(Task.id == task.id)).one()
    set_committed_value(task, "state", state)
    set_committed_value(task, "revision", revision)
    if base_revision is not None and revision != base_revision:
        raise StaleRevision(base_revision, revision)
    raise TransitionError(action, state)


_INSERT_EVENT = insert(TaskEvent.__table__)


def transition(db: Session, task: Task, action: str, actor: Actor, *, base_revision: int | None = None,
               where: tuple = (), also: dict | None = None, **detail) -> None:
    """Move the task by one workflow step, conditional on the state this request saw (and ``base_revision`` and
    ``where`` when given), and record the event. ``also``: more columns the same update writes. A lost race rolls
    back and raises."""
    before = task.state
    target = states.next_state(action, before)
    at = now()
    values: dict = {"state": target, **(also or {})}
    time_open = None
    replica_rule: list = []
    if action == "assign":
        # one worker never holds two replicas of a crop: refused here, and re-checked inside the update itself
        try:
            replica_rule = check_worker_may_take(db, task, actor.ref)
        except TransitionError:
            db.rollback()
            raise
        where = (*where, *replica_rule)
        values["assigned_at"] = at
        if actor.user is not None:
            values["assignee_id"] = actor.user.id
        elif actor.ref:
            values["assignee_ref"] = actor.ref
    if action == "submit":
        values["submitted_at"] = at
        opened = aware(task.opened_at)
        if opened is not None:
            time_open = (at - opened).total_seconds()
            values["time_open_s"] = (task.time_open_s or 0.0) + time_open
            values["opened_at"] = None
    if action in ("approve", "reject"):
        values["reviewed_at"] = at
    condition = [Task.state == before, *where]
    if base_revision is not None:
        condition.append(Task.revision == base_revision)
    if not conditional_update(db, task, condition, values):
        db.rollback()
        if action == "assign" and replica_rule:
            try:  # a racing assign gave this worker another replica of the crop: say so
                check_worker_may_take(db, task, actor.ref)
            finally:
                db.rollback()
        raise_lost_race(db, task, action, base_revision)
    # a Core insert on the transaction's connection: the ORM's unit of work at commit costs more than the statement
    db.connection().execute(_INSERT_EVENT, dict(
        task_id=task.id, action=action, from_state=before.value, to_state=target.value,
        actor_id=actor.user.id if actor.user else None, actor_ref=actor.ref, time_open_s=time_open, detail=detail,
        created_at=at))
