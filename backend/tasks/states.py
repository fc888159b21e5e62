"""Task states and the transitions allowed between them (DESIGN.md, Workflow).

new → prelabeled → assigned → submitted → in_review → approved | rejected → (assigned)
"""
from __future__ import annotations

from backend.store.models import TaskState as S


class TransitionError(Exception):
    """An action that the task's current state does not allow (the API answers 409)."""

    def __init__(self, action: str, state: S):
        super().__init__(f"cannot {action} a task in state '{state.value}'")
        self.action = action
        self.state = state


# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[S], S]] = {
    "prelabel": (frozenset({S.new, S.prelabeled}), S.prelabeled),
    "assign": (frozenset({S.new, S.prelabeled, S.assigned, S.rejected}), S.assigned),
    "submit": (frozenset({S.assigned}), S.submitted),
    "start_review": (frozenset({S.submitted, S.in_review}), S.in_review),
    "approve": (frozenset({S.in_review}), S.approved),
    "reject": (frozenset({S.in_review}), S.rejected),
    # a crop too hard for the crowd (publish --experts-for) goes straight to the experts' queue
    "route_to_expert": (frozenset({S.new, S.prelabeled}), S.submitted),
    # the consensus of a crop's replicas: merged by `cellloop consensus`, it flows on as approved work
    "accept_consensus": (frozenset({S.new, S.prelabeled}), S.approved),
}

# states an annotator's first open, edit or submit assigns the task from
UNASSIGNED = frozenset({S.new, S.prelabeled, S.rejected})

# who may change labels in which state
ANNOTATOR_EDITABLE = frozenset({S.new, S.prelabeled, S.assigned, S.rejected})
REVIEWER_EDITABLE = frozenset({S.in_review})


def next_state(action: str, state: S) -> S:
    try:
        sources, target = TRANSITIONS[action]
    except KeyError:
        raise ValueError(f"unknown workflow action {action!r}") from None
    if state not in sources:
        raise TransitionError(action, state)
    return target


def editable_states(*, reviewer: bool) -> frozenset[S]:
    """Every state in which this kind of actor may change labels (the condition of an edit's update)."""
    return ANNOTATOR_EDITABLE | REVIEWER_EDITABLE if reviewer else ANNOTATOR_EDITABLE


def check_editable(state: S, *, reviewer: bool) -> None:
    allowed = REVIEWER_EDITABLE if reviewer else ANNOTATOR_EDITABLE
    if state not in allowed:
        raise TransitionError("edit", state)
