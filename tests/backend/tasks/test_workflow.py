from __future__ import annotations

import pytest

from backend.store.models import TaskState as S
from backend.tasks.states import TRANSITIONS, TransitionError, check_editable, next_state


def test_happy_path_follows_design():
    state = S.new
    for action, expected in [("prelabel", S.prelabeled), ("assign", S.assigned), ("submit", S.submitted),
                             ("start_review", S.in_review), ("reject", S.rejected), ("assign", S.assigned),
                             ("submit", S.submitted), ("start_review", S.in_review), ("approve", S.approved)]:
        state = next_state(action, state)
        assert state is expected


@pytest.mark.parametrize("action", sorted(TRANSITIONS))
def test_every_other_transition_is_refused(action):
    sources, _ = TRANSITIONS[action]
    for state in set(S) - sources:
        with pytest.raises(TransitionError) as err:
            next_state(action, state)
        assert err.value.state is state and state.value in str(err.value)


def test_approved_is_final_and_edit_rules():
    for action in TRANSITIONS:
        with pytest.raises(TransitionError):
            next_state(action, S.approved)
    check_editable(S.assigned, reviewer=False)
    check_editable(S.in_review, reviewer=True)
    for state in (S.submitted, S.in_review, S.approved):
        with pytest.raises(TransitionError):
            check_editable(state, reviewer=False)
    with pytest.raises(TransitionError):
        check_editable(S.approved, reviewer=True)
    with pytest.raises(ValueError):
        next_state("teleport", S.new)
