"""Tasks: the revision store (snapshots, patches, replay, cache), the workflow on top of it (states and conditional
transitions, review), and task links."""
from backend.tasks.revisions import CorruptHistory, LabelsReplaced, NothingToUndo, RevisionStore
from backend.tasks.states import TransitionError
from backend.tasks.transitions import Actor, StaleRevision
from backend.tasks.workflow import TaskService

__all__ = ["Actor", "CorruptHistory", "LabelsReplaced", "NothingToUndo", "RevisionStore", "StaleRevision", "TaskService",
           "TransitionError"]
