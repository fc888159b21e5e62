"""The workflow on top of the revision store: an annotator opens and submits, a reviewer starts a review and gives
a verdict. Each step is one conditional transition (`backend.tasks.transitions`), so of two racing requests exactly
one wins. No Flask here: the crowd routes, the review routes and the CLI all call this.
"""
from __future__ import annotations

from sqlalchemy import select, update

from backend.store.models import Review, Task, TaskState
from backend.tasks import states
from backend.tasks.crowd import check_pin, score_gold_submit
from backend.tasks.revisions import RevisionStore
from backend.tasks.transitions import Actor, now, transition


class TaskService(RevisionStore):
    """A task's revisions (inherited) and its workflow steps."""

    def open(self, task: Task, actor: Actor) -> None:
        """An annotator opened the task page (POST, never GET): assign it if still unassigned and start its
        clock. Idempotent: opening again, or an already running clock, changes nothing."""
        if task.state in states.UNASSIGNED:
            # the clock starts in the assign's own update (only the open that wins the assign writes it)
            transition(self.db, task, "assign", actor,
                       also={"opened_at": now()} if task.opened_at is None else None)
            self.db.commit()
        elif task.state is TaskState.assigned and task.opened_at is None:
            # conditional: of two racing opens, the first one's time stands
            self.db.execute(update(Task).where(Task.id == task.id, Task.opened_at.is_(None)).values(opened_at=now())
                            .execution_options(synchronize_session=False))
            self.db.commit()
            self.db.refresh(task)
        else:
            self.db.commit()

    def submit(self, task: Task, actor: Actor, base_revision: int | None) -> None:
        self._check_base(task, base_revision)
        if task.state in states.UNASSIGNED:
            transition(self.db, task, "assign", actor, base_revision=base_revision)
        transition(self.db, task, "submit", actor, base_revision=base_revision, revision=base_revision)
        # a gold task is scored against its truth in the same transaction as the submit
        score_gold_submit(self, task, task.assignee_ref or actor.ref)
        self.db.commit()

    def start_review(self, task: Task, reviewer: Actor) -> None:
        if task.state is not TaskState.in_review:
            transition(self.db, task, "start_review", reviewer)
        self.db.commit()

    def review(self, task: Task, reviewer: Actor, verdict: str, comment: str = "", pin: dict | None = None) -> Review:
        if verdict not in ("approve", "reject"):
            raise ValueError("verdict must be 'approve' or 'reject'")
        if verdict == "reject" and not comment.strip():
            raise ValueError("a rejection needs a comment for the annotator")
        check_pin(pin, task)
        if task.state is TaskState.submitted:
            transition(self.db, task, "start_review", reviewer)
        transition(self.db, task, verdict, reviewer, comment=comment)
        review = Review(task_id=task.id, reviewer_id=reviewer.user.id, verdict=task.state.value,
                        comment=comment, revision=task.revision, pin=check_pin(pin, task))
        self.db.add(review)
        self.db.commit()
        return review

    def last_review(self, task: Task) -> Review | None:
        return self.db.scalar(select(Review).where(Review.task_id == task.id).order_by(Review.id.desc()).limit(1))

