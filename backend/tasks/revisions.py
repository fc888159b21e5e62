"""The revision store: a task's arrays in storage and its revisions. No Flask here.

Every label change is a new revision holding its own patch, written under fresh keys before the database
row commits, so a request that loses a race (or crashes half way) never overwrites what another wrote. The
row is then committed only if the task is still at the base revision the editor saw (optimistic locking, through
`backend.tasks.transitions`); otherwise the caller gets `StaleRevision`.

A task stores a full labels snapshot on creation and replacement and then every SNAPSHOT_EVERY revisions; a
revision between them is its last snapshot plus the patches after it, so an edit writes only its patch. With
the per-process `ArrayCache`, an edit costs what the touched area costs: the current labels come from memory,
and a worker whose copy is a few revisions old (another worker served the edits in between) brings it up to
date with those revisions' patches instead of rebuilding from the snapshot.
"""
from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

import numpy as np
from sqlalchemy import JSON, DateTime, Integer, LargeBinary, String, bindparam, cast, insert, select, update
from sqlalchemy.orm import Session, undefer
from sqlalchemy.orm.attributes import set_committed_value

from backend.edits import ASSIST_TOOLS, EditError, LabelIndex, Patch, apply_edit
from backend.edits.brush import stroke_mask
from backend.edits.params import MAX_RADIUS, int_in, points_param
from backend.store.arrays import decode_array, encode_array, validate_labels
from backend.store.cache import ArrayCache
from backend.store.chunks import CHUNK, ChunkGrid
from backend.store.models import Batch, Revision, Task, TaskState
from backend.store.storage import NotFound, Storage
from backend.tasks import chunked
from backend.tasks import maps as task_maps
from backend.tasks import states
from backend.tasks.transitions import (Actor, StaleRevision, advance_revision, now, raise_lost_race, set_columns,
                                       transition)

EDIT_ACTIONS = "edit"
# tasks up to this size store a snapshot with every revision (0: none). On S3 a second PUT per edit costs
# about as much as the rest of the edit (bench/load.py, edit-breakdown), while a worker that missed a few
# revisions catches up from their small patches.
SNAPSHOT_ALWAYS_PIXELS = 0
SNAPSHOT_EVERY = 16
# tools that read the labels only inside their stroke's box: on a task above PARTIAL_ABOVE_PIXELS, a worker without
# the labels in memory reads just the chunks under the stroke, not the whole labels (an 8192² task's are 512 MiB,
# more than the default array cache holds, so without this every stroke would read and decode all of them).
# Smaller tasks are read whole once and then served from memory.
STROKE_TOOLS = ("paint", "erase")
PARTIAL_ABOVE_PIXELS = 4096 * 4096
# states in which nobody has touched a crop: machine work may still replace its first revision
UNTOUCHED = (TaskState.new, TaskState.prelabeled)


# built once: every edit runs it (see advance_revision)
_INSERT_REVISION = insert(Revision.__table__).returning(Revision.__table__.c.id)

# The known-task edit (RevisionStore.edit_known): the task row moves on only while it is exactly as this worker last
# committed it (revision, labels epoch, link nonce), assigned and opened: every column the ordinary path reads to
# decide, checked in the update itself instead of in a SELECT before it.
_TASKS, _REVISIONS = Task.__table__, Revision.__table__
_ADVANCE_KNOWN = update(_TASKS).where(
    _TASKS.c.id == bindparam("task_id"), _TASKS.c.revision == bindparam("base"),
    _TASKS.c.labels_epoch == bindparam("epoch"), _TASKS.c.token_nonce == bindparam("nonce"),
    _TASKS.c.state == TaskState.assigned, _TASKS.c.opened_at.is_not(None)).values(revision=bindparam("number"))
# the rows a worker a few revisions behind replays (RevisionStore._take_known_labels)
_HISTORY = select(_REVISIONS.c.id, _REVISIONS.c.task_id, _REVISIONS.c.number, _REVISIONS.c.labels_key,
                  _REVISIONS.c.patch_key, _REVISIONS.c.patch_bytes).where(
    _REVISIONS.c.task_id == bindparam("task_id"), _REVISIONS.c.number >= bindparam("low"),
    _REVISIONS.c.number <= bindparam("high")).order_by(_REVISIONS.c.number)
_REVISION_COLUMNS = ("number", "action", "params", "target", "labels_key", "patch_key", "patch_bytes", "author_id",
                     "author_ref", "created_at")
_COLUMN_TYPES = {"number": Integer, "action": String, "params": JSON, "target": Integer, "labels_key": String,
                 "patch_key": String, "patch_bytes": LargeBinary, "author_id": Integer, "author_ref": String,
                 "created_at": DateTime(timezone=True)}
# PostgreSQL: the update and the revision's insert in one statement (one round trip, its own transaction): the
# insert selects from the update's RETURNING, so a row that did not move inserts nothing
_MOVED = _ADVANCE_KNOWN.returning(_TASKS.c.id).cte("moved")
_EDIT_KNOWN_PG = insert(_REVISIONS).from_select(
    ["task_id", *_REVISION_COLUMNS],
    # the binds are prefixed: a bind named like a tasks column (created_at) would also be SET by the update
    select(_MOVED.c.id, *(cast(bindparam("r_" + name, type_=_COLUMN_TYPES[name]), _COLUMN_TYPES[name])
                          for name in _REVISION_COLUMNS))).returning(_REVISIONS.c.id)


# _EDIT_KNOWN_PG as psycopg runs it: the statement is the edit's whole conversation with the database, so it goes
# straight to the driver (prepared, on a pooled connection in autocommit); SQLAlchemy's execution around it (cache key,
# result set-up, isolation-level switch) would cost more than the database's own work. The same statement, column for
# column; tests/backend/test_known_task_edit.py checks both forms store the same rows.
_EDIT_KNOWN_PSYCOPG = (
    "WITH moved AS (UPDATE tasks SET revision = %(number)s::integer WHERE tasks.id = %(task_id)s::integer"
    " AND tasks.revision = %(base)s::integer AND tasks.labels_epoch = %(epoch)s::integer"
    " AND tasks.token_nonce = %(nonce)s::integer AND tasks.state = '" + TaskState.assigned.name + "'"
    " AND tasks.opened_at IS NOT NULL RETURNING tasks.id)"
    " INSERT INTO revisions (task_id, number, action, params, target, labels_key, patch_key, patch_bytes, author_id,"
    " author_ref, created_at) SELECT moved.id, %(r_number)s::integer, %(r_action)s::varchar, %(r_params)s::json,"
    " %(r_target)s::integer, %(r_labels_key)s::varchar, %(r_patch_key)s::varchar, %(r_patch_bytes)s::bytea,"
    " %(r_author_id)s::integer, %(r_author_ref)s::varchar, %(r_created_at)s::timestamptz FROM moved RETURNING id")


DIRECT_PSYCOPG = True  # False: the SQLAlchemy form (_EDIT_KNOWN_PG), as any other PostgreSQL driver runs it


def _edit_known_psycopg(engine, params: dict) -> int | None:
    from psycopg.types.json import Json

    raw = engine.raw_connection()  # through the pool: its checkout ping and its reset on return apply
    try:
        conn = raw.driver_connection
        conn.autocommit = True  # one statement, one transaction: no BEGIN and COMMIT round trips
        try:
            row = conn.execute(_EDIT_KNOWN_PSYCOPG, {**params, "r_params": Json(params["r_params"])},
                               prepare=True).fetchone()
        finally:
            try:
                conn.autocommit = False
            except Exception:  # a broken connection: the pool's reset on return discards it
                pass
    finally:
        raw.close()
    return None if row is None else row[0]


class NothingToUndo(Exception):
    pass


class LabelsReplaced(StaleRevision):
    """Machine work (prelabel) replaced revision 0's labels after this request read them: its change was computed on
    labels that are no longer the task's, so it is refused (409) and the client reloads."""

    def __init__(self, base: int | None, current: int):
        super().__init__(base, current)
        self.args = (f"the task's labels were replaced (prelabel) after this change read them: reload the task "
                     f"(revision {current})",)


class NotChunked(LookupError):
    """The task is small (or older than chunked storage): its arrays are read whole, not by chunk."""


class CorruptHistory(Exception):
    """A stored patch no longer matches the labels it should replay onto: a server-side fault, never the
    client's, so the API answers 500 and changes nothing."""


@dataclass(frozen=True)
class KnownTask:
    """A task row as this worker last committed a revision of it: what an edit needs to know before its update.
    The immutable columns (box, image, project) are simply true; the mutable ones (revision, labels epoch, link nonce)
    are re-checked by the edit's conditional update, which also requires the task assigned and opened."""

    task_id: int
    project_id: int | None  # None: the batch was not loaded (patches then go in rows, or the ordinary path runs)
    y0: int
    x0: int
    y1: int
    x1: int
    image_key: str
    revision: int
    labels_epoch: int
    token_nonce: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


@dataclass(frozen=True)
class CachedRevision:
    """A committed revision as this worker's cache knows it (number and identity), standing in for its row."""

    task_id: int
    number: int
    identity: str


class RevisionStore:
    def __init__(self, session: Session, storage: Storage, cache: ArrayCache | None = None, *,
                 patch_in_row_bytes: int = 0):
        self.db = session
        self.storage = storage
        self.cache = cache
        # patches up to this size are stored in their revision's row (no storage request per edit)
        self.patch_in_row_bytes = patch_in_row_bytes
        self._storage_name = repr(storage)

    # --- arrays ----------------------------------------------------------------------------------------
    def _key(self, task: Task, kind: str, number: int | None = None, ext: str = "npy.gz") -> str:
        return self._key_of(task.batch.project_id, task.id, kind, number, ext)

    @staticmethod
    def _key_of(project_id: int, task_id: int, kind: str, number: int | None = None, ext: str = "npy.gz") -> str:
        base = f"projects/{project_id}/tasks/{task_id}"
        if number is None:
            return f"{base}/{kind}.{ext}"
        # a random suffix: two racing requests for the same revision number never share a key
        return f"{base}/{kind}/{number:06d}-{secrets.token_hex(6)}.{ext}"

    def _cache_key(self, key: str) -> tuple:
        return (self._storage_name, key)

    def image(self, task: Task | KnownTask) -> np.ndarray:
        """The task's crop; read-only when it comes from (and goes into) the cache."""
        if self.cache is None:
            return decode_array(self.storage.get(task.image_key))
        ck = self._cache_key(task.image_key)
        image = self.cache.get(ck)
        if image is None:
            image = decode_array(self.storage.get(task.image_key))
            image.flags.writeable = False
            self.cache.put(ck, image)
        return image

    def image_bytes(self, task: Task) -> bytes:
        return self.storage.get(task.image_key)

    # --- chunks (big tasks) -----------------------------------------------------------------------------------
    def chunk_grid(self, task: Task) -> ChunkGrid:
        if task.chunk_size is None:
            raise NotChunked(f"task {task.id} is not served in chunks: read /image and /labels")
        return ChunkGrid(task.shape, task.chunk_size)

    def image_chunk_bytes(self, task: Task, level: int, row: int, col: int) -> bytes:
        """One stored image chunk (gzip .npy, (h, w, C)) as it is: the image never changes."""
        self.chunk_grid(task).check(level, row, col)
        return self.storage.get(chunked.image_chunk_key(task.image_key, level, row, col))

    def labels_chunk_bytes(self, task: Task, level: int, row: int, col: int, revision: int | None = None) -> bytes:
        """One chunk of the current labels (gzip .npy, (h, w, 2) int32). ``revision``: the revision the caller
        is assembling; any other current revision is a StaleRevision (409), so an editor never stitches chunks
        of two revisions together."""
        grid = self.chunk_grid(task)
        grid.check(level, row, col)
        if revision is not None and revision != task.revision:
            raise StaleRevision(revision, task.revision)
        rev = self.current_revision(task)
        snap, later = self._history_since_snapshot(task, rev)
        if not chunked.is_manifest(snap.labels_key):
            return encode_array(grid.cut(self.labels(task), level, row, col))
        try:
            manifest = self._manifest(task, snap.labels_key)
            patches = [self._patch(r) for r in later]
            if not any((row, col) in grid.at_level(grid.touching(p.box), level) for p in patches):
                # untouched since the snapshot: its stored chunk, as it is (no decoding, no encoding)
                return self.storage.get(manifest.key(level, row, col))
            if self.cache is not None:
                entry = self.cache.get(self._cache_key(self._identity(rev)))
                if entry is not None:
                    return encode_array(grid.cut(entry[0], level, row, col))
            # the snapshot's chunk and the patches after it: a few small reads, never the whole labels
            chunk = chunked.chunk_at_revision(self.storage, manifest, level, row, col, patches)
        except (NotFound, EditError, ValueError) as exc:
            raise CorruptHistory(f"task {task.id}: chunk ({level}, {row}, {col}) of revision {rev.number} "
                                 f"cannot be read: {exc}") from exc
        return encode_array(chunk)

    def _manifest(self, task: Task, key: str) -> chunked.Manifest:
        # manifests are immutable (fresh keys): cached as their bytes, so the cache can count them (a key of their
        # own: a revision's identity key already names its labels)
        ck = (repr(self.storage), "manifest", key)
        data = self.cache.get(ck) if self.cache is not None else None
        if data is None:
            try:
                data = np.frombuffer(self.storage.get(key), np.uint8)
            except NotFound as exc:
                raise CorruptHistory(f"task {task.id}: labels manifest {key} is gone") from exc
            if self.cache is not None:
                self.cache.put(ck, data)
        try:
            return chunked.Manifest.from_bytes(data.tobytes(), task.shape)
        except ValueError as exc:
            raise CorruptHistory(f"task {task.id}: {exc}") from exc

    def _stored_chunk(self, manifest: chunked.Manifest, level: int, row: int, col: int) -> np.ndarray:
        """A copy of one stored labels chunk; decoded once per worker (stored chunks never change), so strokes in
        the same place on a task too big to hold do not decode their chunks again."""
        key = manifest.key(level, row, col)
        ck = (repr(self.storage), "labels chunk", key)
        chunk = self.cache.get(ck) if self.cache is not None else None
        if chunk is None:
            chunk = chunked.read_chunk(self.storage, manifest, level, row, col)
            chunk.flags.writeable = False
            if self.cache is not None:
                self.cache.put(ck, chunk)
        return chunk.copy()

    def _patch_bytes(self, key: str) -> bytes:
        ck = (repr(self.storage), "patch bytes", key)
        data = self.cache.get(ck) if self.cache is not None else None
        if data is None:
            data = np.frombuffer(self.storage.get(key), np.uint8)
            if self.cache is not None:
                self.cache.put(ck, data)
        return data.tobytes()

    def _history_since_snapshot(self, task: Task, rev: Revision) -> tuple[Revision, list[Revision]]:
        """The last snapshot at or before ``rev`` and the revisions after it up to ``rev``, each with its patch."""
        if rev.labels_key is not None:
            return rev, []
        snap = self.db.scalar(
            select(Revision).where(Revision.task_id == task.id, Revision.number < rev.number,
                                   Revision.labels_key.is_not(None)).order_by(Revision.number.desc()).limit(1))
        if snap is None:
            raise CorruptHistory(f"task {task.id}: no labels snapshot before revision {rev.number}")
        later = self.db.scalars(
            select(Revision).where(Revision.task_id == task.id, Revision.number > snap.number,
                                   Revision.number <= rev.number).order_by(Revision.number)
            .options(undefer(Revision.patch_bytes))).all()
        if [r.number for r in later] != list(range(snap.number + 1, rev.number + 1)):
            raise CorruptHistory(f"task {task.id}: revisions missing between {snap.number} and {rev.number}")
        for r in later:
            if not self._has_patch(r):
                raise CorruptHistory(f"task {task.id}: revision {r.number} has neither snapshot nor patch")
        return snap, later

    def _read_snapshot(self, task: Task, key: str) -> np.ndarray:
        if chunked.is_manifest(key):
            return chunked.read_labels(self.storage, self._manifest(task, key))
        return validate_labels(decode_array(self.storage.get(key)), shape=task.shape)

    def _write_snapshot(self, task: Task, key: str, labels: np.ndarray, dirty_since: Revision | None = None,
                        dirty: set | None = None, cut=None) -> list[str]:
        """Store a labels snapshot under ``key``; returns the keys written. A chunked task's snapshot rewrites only
        the ``dirty`` level-0 chunks of the snapshot ``dirty_since`` (all of them without one). ``cut``: see
        ``chunked.write_labels_snapshot`` (labels read only in part)."""
        if task.chunk_size is None:
            self.storage.put(key, encode_array(labels))
            return [key]
        previous = None
        if dirty_since is not None and chunked.is_manifest(dirty_since.labels_key):
            previous = self._manifest(task, dirty_since.labels_key)
        return chunked.write_labels_snapshot(self.storage, key, labels, task.chunk_size, previous,
                                             dirty if previous is not None else None, cut=cut)

    def _stroke_labels(self, task: Task, tool: str, params: dict) -> tuple[Revision, chunked.PartialLabels] | None:
        """For a stroke on a chunked task this worker does not hold: the current revision and its labels read only
        in the chunks under the stroke. None where the whole labels are needed (another tool, a small task, labels
        in memory, parameters the tool will refuse anyway)."""
        if tool not in STROKE_TOOLS or not self._reads_in_part(task):
            return None
        try:
            points = points_param(params, "points", task.shape)
            box, _ = stroke_mask(points, int_in(params, "radius", 1, MAX_RADIUS), task.shape)
        except EditError:
            return None
        return self._labels_in_part(task, [box])

    def _reads_in_part(self, task: Task) -> bool:
        """Whether a change to ``task`` should read only the chunks it touches: a task too big to hold, whose
        labels this worker does not have in memory (or a few patches behind)."""
        if task.chunk_size is None or task.shape[0] * task.shape[1] <= PARTIAL_ABOVE_PIXELS:
            return False
        if self.cache is None:
            return True
        rev = self.current_revision(task)
        return (self.cache.get(self._cache_key(self._identity(rev))) is None
                and self.cache.get(self._latest_key(task.id)) is None)

    def _labels_in_part(self, task: Task, boxes) -> tuple[Revision, chunked.PartialLabels] | None:
        """The current revision and its labels read only in the chunks the boxes touch."""
        rev = self.current_revision(task)
        snap, later = self._history_since_snapshot(task, rev)
        if not chunked.is_manifest(snap.labels_key):
            return None
        try:
            patches = [self._patch(r) for r in later]
            grid = self.chunk_grid(task)
            return rev, chunked.PartialLabels(self.storage, self._manifest(task, snap.labels_key), patches,
                                              set().union(*(grid.touching(b) for b in boxes)), read=self._stored_chunk)
        except (NotFound, EditError, ValueError) as exc:
            raise CorruptHistory(f"task {task.id}: revision {rev.number}'s chunks cannot be read: {exc}") from exc

    def _labels_snapshot_key(self, task: Task, number: int) -> str:
        return self._key(task, "labels", number, ext="chunks.json" if task.chunk_size is not None else "npy.gz")

    def current_revision(self, task: Task) -> Revision:
        return self._revision(task, task.revision)

    def _revision(self, task: Task, number: int, *, with_patch: bool = False) -> Revision:
        query = select(Revision).where(Revision.task_id == task.id, Revision.number == number)
        rev = self.db.scalar(query.options(undefer(Revision.patch_bytes)) if with_patch else query)
        if rev is None:
            raise LookupError(f"task {task.id} has no revision {number}")
        return rev

    @staticmethod
    def _identity(rev: Revision | CachedRevision) -> str:
        if isinstance(rev, CachedRevision):
            return rev.identity
        # both keys carry a random suffix: unique to this revision, and never rewritten; a revision with neither
        # keeps its patch in its row, which is never rewritten either
        return rev.labels_key or rev.patch_key or f"row:{rev.task_id}:{rev.number}:{rev.id}"

    @staticmethod
    def _has_patch(rev: Revision) -> bool:
        return rev.patch_key is not None or rev.patch_bytes is not None

    def _patch(self, rev: Revision) -> Patch:
        """A revision's stored patch, from its row or from storage (through the cache)."""
        return Patch.from_bytes(rev.patch_bytes if rev.patch_bytes is not None else self._patch_bytes(rev.patch_key))

    def _rebuild(self, task: Task, rev: Revision) -> np.ndarray:
        """The labels of ``rev``: its snapshot, or the last snapshot before it plus the patches after that."""
        try:
            return self._replay_from_snapshot(task, rev)
        except NotFound as exc:
            raise CorruptHistory(
                f"task {task.id}: a stored object of revision {rev.number}'s history is gone: {exc}") from exc

    def _replay_from_snapshot(self, task: Task, rev: Revision) -> np.ndarray:
        snap, later = self._history_since_snapshot(task, rev)
        labels = self._read_snapshot(task, snap.labels_key)
        for r in later:
            try:
                self._patch(r).apply(labels, check=True)
            except EditError as exc:
                raise CorruptHistory(f"task {task.id}: revision {r.number} does not replay: {exc}") from exc
        return labels

    def labels(self, task: Task) -> np.ndarray:
        """A fresh copy of the current labels (the caller may change it)."""
        rev = self.current_revision(task)
        if self.cache is not None:
            entry = self.cache.get(self._cache_key(self._identity(rev)))
            if entry is not None:
                return entry[0].copy()
            entry = self._take_cached(task, rev)
            if entry is not None:
                self._keep(rev, *entry)
                return entry[0].copy()
        return self._rebuild(task, rev)

    def labels_at(self, task: Task, number: int) -> np.ndarray:
        """The labels of revision ``number`` (a fresh copy)."""
        return self._rebuild(task, self._revision(task, number))

    def labels_bytes(self, task: Task) -> bytes:
        rev = self.current_revision(task)
        if rev.labels_key is not None and not chunked.is_manifest(rev.labels_key):
            return self.storage.get(rev.labels_key)
        return encode_array(self.labels(task))

    def _keep(self, rev: Revision, labels: np.ndarray, index: LabelIndex | None) -> None:
        """Give unchanged working labels back to the cache as ``rev``'s."""
        if self.cache is not None:
            self.cache.put(self._cache_key(self._identity(rev)), (labels, index))
            self.cache.put(self._latest_key(rev.task_id), (rev.number, self._identity(rev)))

    def _latest_key(self, task_id: int) -> tuple:
        return (self._storage_name, "latest cached revision of task", task_id)

    def _take_cached(self, task: Task, rev: Revision) -> tuple[np.ndarray, LabelIndex | None] | None:
        """This worker's labels of ``rev`` (taken out of the cache), or None. A copy of an earlier revision of
        the task is brought up to date with the patches after it (a few small reads) when its identity still
        matches the stored history."""
        entry = self.cache.take(self._cache_key(self._identity(rev)))
        if entry is not None:
            return entry
        pointer = self.cache.get(self._latest_key(task.id))
        if pointer is None or not 0 <= rev.number - pointer[0] <= SNAPSHOT_EVERY:
            return None
        number, identity = pointer
        history = self.db.scalars(select(Revision).where(
            Revision.task_id == task.id, Revision.number >= number, Revision.number <= rev.number)
            .order_by(Revision.number).options(undefer(Revision.patch_bytes))).all()
        return self._cached_plus_patches(identity, history, number, rev.number)

    def _cached_plus_patches(self, identity, history, low: int, high: int) -> tuple | None:
        """(labels, index) of revision ``high``: the cached copy of revision ``low`` (``identity``), taken out of the
        cache, with ``history``'s patches applied; None when the rows are not revisions low..high in order with a
        patch above ``low``, or the copy is gone."""
        if ([r.number for r in history] != list(range(low, high + 1))
                or self._identity(history[0]) != identity or not all(self._has_patch(r) for r in history[1:])):
            return None
        entry = self.cache.take(self._cache_key(identity))
        if entry is None:
            return None
        labels, index = entry
        try:
            for r in history[1:]:
                patch = self._patch(r)
                patch.apply(labels, check=True)
                if index is not None:
                    index.update(patch, labels)
        except (EditError, NotFound):
            return None  # the copy may be half updated: dropped, the caller rebuilds from storage
        return labels, index

    def _take_current(self, task: Task) -> tuple[CachedRevision, tuple] | None:
        """The current revision's labels from this worker's cache without asking the database which revision that is:
        when this worker's latest copy of the task is of the revision the task row names. Revision numbers are unique
        per task and a committed revision other than 0 never changes (0 may be replaced by prelabel), so the pointer,
        set only from committed rows, names exactly the current revision."""
        if self.cache is None or task.revision == 0:
            return None
        pointer = self.cache.get(self._latest_key(task.id))
        if pointer is None or pointer[0] != task.revision:
            return None
        entry = self.cache.take(self._cache_key(pointer[1]))
        return None if entry is None else (CachedRevision(task.id, pointer[0], pointer[1]), entry)

    def _working_labels(self, task: Task) -> tuple[Revision | CachedRevision, np.ndarray, LabelIndex | None]:
        """The current revision, and its labels and index owned by this request (taken out of the cache: an
        edit changes them in place, and only a committed revision puts them back)."""
        cached = self._take_current(task)
        if cached is not None:
            rev, (labels, index) = cached
            return rev, labels, index if index is not None else LabelIndex.build(labels)
        rev = self.current_revision(task)
        if self.cache is not None:
            entry = self._take_cached(task, rev)
            if entry is not None:
                labels, index = entry
                # the second edit on this worker pays for the index; later ones work in their boxes
                return rev, labels, index if index is not None else LabelIndex.build(labels)
        return rev, self._rebuild(task, rev), None

    # --- creation --------------------------------------------------------------------------------------
    def create_task(
        self,
        batch: Batch,
        box: tuple[int, int, int, int],
        image: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        actor: Actor = Actor(ref="system"),
        action: str = "init",
    ) -> Task:
        y0, x0, y1, x1 = box
        if image.shape[:2] != (y1 - y0, x1 - x0):
            raise ValueError(f"image crop {image.shape[:2]} does not match box {box}")
        if labels is None:
            labels = np.zeros((y1 - y0, x1 - x0, 2), np.int32)
        labels = validate_labels(labels, shape=image.shape[:2])
        state = TaskState.prelabeled if labels.any() else TaskState.new
        # a big task is also stored in chunks, so the editor opens it piece by piece and edits rewrite pieces
        chunk_size = CHUNK if max(y1 - y0, x1 - x0) > chunked.CHUNKED_ABOVE else None
        task = Task(batch=batch, y0=y0, x0=x0, y1=y1, x1=x1, state=state, image_key="", revision=0,
                    chunk_size=chunk_size)
        self.db.add(task)
        self.db.flush()
        task.image_key = self._key(task, "image", 0)
        self.storage.put(task.image_key, encode_array(image))
        if chunk_size is not None:
            chunked.write_image_chunks(self.storage, task.image_key, image, ChunkGrid(image.shape, chunk_size))
        labels_key = self._labels_snapshot_key(task, 0)
        self._write_snapshot(task, labels_key, labels)
        self.db.add(Revision(task=task, number=0, action=action, labels_key=labels_key,
                             author_id=actor.user.id if actor.user else None, author_ref=actor.ref))
        return task

    # --- label changes -----------------------------------------------------------------------------------
    def _check_base(self, task: Task, base_revision: int | None) -> None:
        if base_revision is None or base_revision != task.revision:
            raise StaleRevision(base_revision, task.revision)

    def _check_editable(self, task: Task, actor: Actor) -> None:
        states.check_editable(task.state, reviewer=actor.reviewer and task.state is TaskState.in_review)

    def _wants_snapshot(self, task: Task, labels: np.ndarray, patch: Patch | None, number: int) -> bool:
        if patch is None or labels.shape[0] * labels.shape[1] <= SNAPSHOT_ALWAYS_PIXELS:
            return True
        # every SNAPSHOT_EVERY-th revision: no revision is ever more than that many patches from a snapshot
        # (creation and replacement add snapshots in between), and no query is needed to know
        return number % SNAPSHOT_EVERY == 0

    def _commit_revision(self, task: Task, actor: Actor, labels: np.ndarray, patch: Patch | None, *,
                         action: str, params: dict, target: int | None = None,
                         index: LabelIndex | None = None, epoch: int | None = None,
                         partial: chunked.PartialLabels | None = None) -> Revision:
        """Write the new revision's arrays under fresh keys, then move the task on by one revision if, and
        only if, it is still at the revision this request started from (optimistic lock) and, when ``epoch`` is
        given (the labels epoch read before the labels the change was computed on), revision 0 was not replaced
        meanwhile. ``labels`` are the labels after the change; once committed they go to the cache as the task's
        current labels."""
        base = task.revision
        number = base + 1
        patch_bytes = None if patch is None else patch.to_bytes()
        in_row = patch_bytes is not None and len(patch_bytes) <= self.patch_in_row_bytes
        patch_key = None if patch is None or in_row else self._key(task, "patches", number, ext="patch")
        labels_key = (self._labels_snapshot_key(task, number) if self._wants_snapshot(task, labels, patch, number)
                      else None)
        dirty_since, dirty = (None, None) if labels_key is None else self._dirty_since_snapshot(task, patch)
        if partial is not None and dirty_since is None:
            labels_key = None  # labels read in part cannot make a whole snapshot: this revision keeps its patch only
        written = []
        if patch_key is not None:
            self.storage.put(patch_key, patch_bytes)
            written.append(patch_key)
        if labels_key is not None:
            written += self._write_snapshot(task, labels_key, labels, dirty_since, dirty,
                                            cut=None if partial is None else partial.chunk_after(patch))
        # one conditional update decides the race: the task must still be at the base revision and in a state
        # this actor may edit, so an edit that loses to a submit or another edit changes nothing
        # (and a prelabel write that landed after this request read its labels bumps the epoch: a patch computed on
        # the replaced labels would not replay onto the new ones)
        editable = states.editable_states(reviewer=actor.reviewer)
        if not advance_revision(self.db, task, base, editable, epoch):
            self.db.rollback()
            for key in written:
                self.storage.delete(key)
            if epoch is not None:
                now_epoch, revision = self.db.execute(
                    select(Task.labels_epoch, Task.revision).where(Task.id == task.id)).one()
                if now_epoch != epoch and revision == base:
                    set_committed_value(task, "labels_epoch", now_epoch)
                    raise LabelsReplaced(base, revision)
            raise_lost_race(self.db, task, "edit", base)
        if actor.user is None and task.state in states.UNASSIGNED:
            transition(self.db, task, "assign", actor)
        if actor.user is None and task.opened_at is None:
            set_columns(self.db, task, opened_at=now())  # the first edit starts the clock when the page never said "open"
        row = dict(task_id=task.id, number=number, action=action, params=params, target=target,
                   labels_key=labels_key, patch_key=patch_key, patch_bytes=patch_bytes if in_row else None,
                   author_id=actor.user.id if actor.user else None, author_ref=actor.ref, created_at=now())
        # a Core insert: the ORM's unit of work would cost more than the statement; the row object handed back is
        # built from the same values (never added to the session)
        rev_id = self.db.connection().execute(_INSERT_REVISION, row).scalar_one()
        self.db.commit()
        rev = Revision(id=rev_id, **row)
        if self.cache is not None and partial is None:  # labels read in part are nobody's current labels
            if index is not None:  # only edits and replays (which have a patch) bring an index
                index.update(patch, labels)
            self._keep(rev, labels, index)
            self._remember(task)
        return rev

    # --- the known-task edit ----------------------------------------------------------------------------------
    def _known_key(self, task_id: int) -> tuple:
        return (self._storage_name, "task row as last committed", task_id)

    def _remember(self, task: Task) -> None:
        """Keep the task row as this commit left it, for the next edit of it on this worker (``edit_known``)."""
        if task.chunk_size is not None or task.state is not TaskState.assigned or task.opened_at is None:
            self.cache.take(self._known_key(task.id))
            return
        batch = task.__dict__.get("batch")  # loaded with the task, or not at all (no query for it here)
        self.cache.put(self._known_key(task.id), KnownTask(
            task.id, None if batch is None else batch.project_id, task.y0, task.x0, task.y1, task.x1,
            task.image_key, task.revision, task.labels_epoch, task.token_nonce))

    def known_task(self, task_id: int) -> KnownTask | None:
        """The task row as this worker last committed a revision of it, or None."""
        return None if self.cache is None else self.cache.get(self._known_key(task_id))

    def edit_known(self, known: KnownTask, actor: Actor, base_revision: int, tool: str,
                   params: dict) -> tuple[Revision, Patch] | None:
        """A crowd edit of a task this worker has committed before, without reading the task row first: the labels come
        from this worker's cache (caught up with the patches since, when another worker served some edits), and one
        conditional update (revision, labels epoch, link nonce, state assigned,
        opened) decides the race and records the revision, in one round trip on PostgreSQL. None whenever anything
        is not exactly the common case (another revision, a snapshot due, an assist tool, a refused or empty edit,
        a row that moved): the caller then runs the ordinary path, which reads the task and answers as always (404
        for a revoked link, 409 for a stale base, 400 for bad parameters), with these labels back in the cache."""
        number = base_revision + 1
        if self.cache is None or actor.user is not None or base_revision < 1 or tool in ASSIST_TOOLS:
            return None
        held = self._take_known_labels(known.task_id, base_revision)
        if held is None:
            return None
        current, labels, index = held
        index = index if index is not None else LabelIndex.build(labels)
        put_back = lambda: self._keep(current, labels, index)  # noqa: E731 (unchanged until the row moved)
        try:
            image = self.image(known) if params.get("channel") is not None else None
            patch = apply_edit(labels, image, tool, params, index=index)
        except Exception:
            put_back()  # apply_edit leaves the labels untouched; the ordinary path answers
            return None
        patch_bytes = None if patch.is_empty else patch.to_bytes()
        in_row = patch_bytes is not None and len(patch_bytes) <= self.patch_in_row_bytes
        if (patch_bytes is None or self._wants_snapshot(None, labels, patch, number)
                or (not in_row and known.project_id is None)):
            put_back()
            return None
        patch_key = None if in_row else self._key_of(known.project_id, known.task_id, "patches", number, "patch")
        row = dict(task_id=known.task_id, number=number, action=EDIT_ACTIONS, params={"tool": tool, **params},
                   target=None, labels_key=None, patch_key=patch_key, patch_bytes=patch_bytes if in_row else None,
                   author_id=None, author_ref=actor.ref, created_at=now())
        try:
            if patch_key is not None:
                self.storage.put(patch_key, patch_bytes)
            rev_id = self._advance_known(known, base_revision, row)
        except BaseException:
            self._forget_patch(patch_key)
            put_back()
            raise
        if rev_id is None:  # the row is not as this worker knew it: the ordinary path says how
            # (what this worker knows stays: the update re-checks all of it every time, so it can never let through
            # what the row no longer allows, and a client that reloads goes on without the task row)
            self._forget_patch(patch_key)
            put_back()
            return None
        patch.apply(labels, check=False)
        index.update(patch, labels)
        rev = Revision(id=rev_id, **row)
        self._keep(rev, labels, index)
        self.cache.put(self._known_key(known.task_id), dataclasses.replace(known, revision=number))
        return rev, patch

    def _take_known_labels(self, task_id: int, base: int) -> tuple[CachedRevision, np.ndarray, LabelIndex | None] | None:
        """This worker's labels of revision ``base`` (taken out of the cache), without reading the task row: its copy of
        ``base`` itself, or of a few revisions before it brought up to date with the patches in between (one query,
        when another worker served the edits in between), as in ``_take_cached``. None when it holds neither."""
        pointer = self.cache.get(self._latest_key(task_id))
        if pointer is None or not 0 <= base - pointer[0] <= SNAPSHOT_EVERY:
            return None
        number, identity = pointer
        if number == base:
            entry = self.cache.take(self._cache_key(identity))
            return None if entry is None else (CachedRevision(task_id, number, identity), *entry)
        # committed revisions above 0 never change: the client's base names rows that are what they will always be
        history = self.db.execute(_HISTORY, {"task_id": task_id, "low": number, "high": base}).all()
        self.db.rollback()  # a read: the edit's own statement runs on its own connection
        caught_up = self._cached_plus_patches(identity, history, number, base)
        return None if caught_up is None else (CachedRevision(task_id, base, self._identity(history[-1])), *caught_up)

    def _forget_patch(self, key: str | None) -> None:
        if key is not None:
            self.storage.delete(key)

    def _advance_known(self, known: KnownTask, base: int, row: dict) -> int | None:
        """Move the task from ``base`` on and insert the revision ``row``, committed, if the row is as ``known`` says;
        the new revision's id, or None (nothing written)."""
        params = {"task_id": known.task_id, "base": base, "number": base + 1, "epoch": known.labels_epoch,
                  "nonce": known.token_nonce}
        engine = self.db.get_bind()
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg" and DIRECT_PSYCOPG:
            return _edit_known_psycopg(engine, {**params, **{"r_" + k: v for k, v in row.items()}})
        if engine.dialect.name == "postgresql":
            # its own connection in autocommit: one statement is one transaction, with no BEGIN and COMMIT round trips
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return conn.execute(_EDIT_KNOWN_PG, {**params, **{"r_" + k: v for k, v in row.items()}}).scalar()
        conn = self.db.connection()
        if conn.execute(_ADVANCE_KNOWN, params).rowcount != 1:
            self.db.rollback()
            return None
        rev_id = conn.execute(_INSERT_REVISION, row).scalar_one()
        self.db.commit()
        return rev_id

    def _dirty_since_snapshot(self, task: Task, patch: Patch | None) -> tuple[Revision | None, set | None]:
        """For a chunked task's next snapshot: the last snapshot and the level-0 chunks changed since it (the
        boxes of the patches after it, and of ``patch``); (None, None) when every chunk must be written."""
        if task.chunk_size is None or patch is None:
            return None, None
        try:
            snap, later = self._history_since_snapshot(task, self.current_revision(task))
            grid = self.chunk_grid(task)
            dirty = grid.touching(patch.box)
            for r in later:
                dirty |= grid.touching(self._patch(r).box)
        except (CorruptHistory, NotFound, EditError):
            return None, None  # write every chunk: a complete snapshot needs no history
        return snap, dirty

    def _commit_patch(self, task: Task, actor: Actor, labels: np.ndarray, patch: Patch, *,
                      action: str, params: dict, target: int | None = None,
                      index: LabelIndex | None = None, epoch: int | None = None,
                      partial: chunked.PartialLabels | None = None) -> Revision:
        # replays must find exactly the pixels their patch recorded; a mismatch means corrupt history
        patch.apply(labels, check=action != EDIT_ACTIONS)
        return self._commit_revision(task, actor, labels, patch, action=action, params=params, target=target,
                                     index=index, epoch=epoch, partial=partial)

    def edit(self, task: Task, actor: Actor, base_revision: int | None, tool: str, params: dict) -> tuple[Revision, Patch]:
        self._check_base(task, base_revision)
        self._check_editable(task, actor)
        epoch = task.labels_epoch  # read before the labels the patch is computed on
        stroke = self._stroke_labels(task, tool, params)
        if stroke is not None:
            current, partial = stroke
            labels, index = partial.labels, None
            keep = lambda: None  # noqa: E731 (labels read in part go nowhere)
        else:
            partial = None
            current, labels, index = self._working_labels(task)
            keep = lambda: self._keep(current, labels, index)  # noqa: E731
        try:
            patch = apply_edit(labels, self._image_for(task, params), tool, params, index=index,
                               maps=self._maps_for(task, tool))
        except Exception:
            keep()  # apply_edit leaves the labels untouched
            raise
        if patch.is_empty:
            # a no-op leaves no revision behind: nothing changed, and the undo stack stays meaningful
            keep()
            return current, patch
        rev = self._commit_patch(task, actor, labels, patch, action=EDIT_ACTIONS, params={"tool": tool, **params},
                                 index=index, epoch=epoch, partial=partial)
        return rev, patch

    def _image_for(self, task: Task, params: dict) -> np.ndarray | None:
        # only the tools given a channel read the image: a stroke on a big task never decodes its channels
        return self.image(task) if params.get("channel") is not None else None

    def maps(self, task: Task) -> np.ndarray | None:
        """The crop's model maps (read-only), or None when it has none (the assist tools are then off)."""
        return task_maps.load_maps(self.storage, task, self.cache)

    def _maps_for(self, task: Task, tool: str) -> np.ndarray | None:
        if tool not in ASSIST_TOOLS:
            return None
        maps = self.maps(task)
        if maps is None:
            raise EditError(task_maps.NO_MAPS_REASON)
        return maps

    def preview(self, task: Task, actor: Actor, base_revision: int | None, tool: str, params: dict) -> Patch:
        """The patch ``tool`` would make on the current labels, computed exactly as ``edit`` would and stored
        nowhere (the editor's box preview before apply). Same checks as an edit, so a preview of a task the
        actor may not edit is refused too."""
        self._check_base(task, base_revision)
        self._check_editable(task, actor)
        current, labels, index = self._working_labels(task)
        try:
            return apply_edit(labels, self._image_for(task, params), tool, params, index=index,
                              maps=self._maps_for(task, tool))
        finally:
            self._keep(current, labels, index)  # apply_edit leaves the labels untouched

    def history(self, task: Task) -> tuple[list[int], list[int]]:
        """The undo and redo stacks (the last revision number of each step), derived from the revision log."""
        undo, redo = self._steps(task)
        return [step[-1] for step in undo], [step[-1] for step in redo]

    def _steps(self, task: Task) -> tuple[list[list[int]], list[list[int]]]:
        """The undo and redo stacks as steps, each the revision numbers of its edits in order. Consecutive edits
        naming the same ``stroke`` (one long stroke the editor cut into several requests) on the same layer are
        one step: one undo takes the whole stroke back."""
        undo: list[list[int]] = []
        redo: list[list[int]] = []
        last = None  # (stroke, layer) of the revision just before, when it was an edit of a stroke
        # three columns, not whole rows: every undo and every task JSON reads the whole log
        for rev in self.db.execute(select(Revision.number, Revision.action, Revision.params)
                                   .where(Revision.task_id == task.id).order_by(Revision.number)):
            if rev.action == "undo":
                redo.append(undo.pop())
            elif rev.action == "redo":
                undo.append(redo.pop())
            elif rev.action == EDIT_ACTIONS:
                params = rev.params or {}
                stroke = params.get("stroke")
                key = None if stroke is None else (stroke, params.get("layer", 0))
                if key is not None and key == last and undo:
                    undo[-1].append(rev.number)
                else:
                    undo.append([rev.number])
                redo.clear()
                last = key
                continue
            elif rev.action == "replace":
                # a wholesale replacement has no patch to step through: history before it stays
                # readable in storage, but undo stops here
                undo.clear()
                redo.clear()
            last = None
        return undo, redo

    def replace_labels(self, task: Task, actor: Actor, base_revision: int | None, labels: np.ndarray) -> Revision:
        """Store uploaded labels (e.g. fixed in a desktop tool) as a new revision; validated first, so a
        bad upload changes nothing."""
        self._check_base(task, base_revision)
        self._check_editable(task, actor)
        labels = validate_labels(labels, shape=task.shape)
        return self._commit_revision(task, actor, labels, None, action="replace", params={})

    def _stored_patch(self, task: Task, number: int) -> Patch:
        return self._patch(self._revision(task, number, with_patch=True))

    def undo(self, task: Task, actor: Actor, base_revision: int | None) -> tuple[Revision, Patch]:
        return self._replay(task, actor, base_revision, "undo")

    def redo(self, task: Task, actor: Actor, base_revision: int | None) -> tuple[Revision, Patch]:
        return self._replay(task, actor, base_revision, "redo")

    def _replay(self, task: Task, actor: Actor, base_revision: int | None, action: str) -> tuple[Revision, Patch]:
        self._check_base(task, base_revision)
        self._check_editable(task, actor)
        undo, redo = self._steps(task)
        stack = undo if action == "undo" else redo
        if not stack:
            raise NothingToUndo(f"nothing to {action}")
        step = stack[-1]
        target = step[-1]
        epoch = task.labels_epoch  # read before the labels the patch applies to
        partial = None
        if self._reads_in_part(task):
            # an undo on a task too big to hold reads the chunks its step's patches cover
            try:
                boxes = [self._stored_patch(task, n).box for n in step]
            except (EditError, NotFound) as exc:
                raise CorruptHistory(f"task {task.id}: cannot {action} revision {target}: {exc}") from exc
            in_part = self._labels_in_part(task, boxes)
            if in_part is not None:
                partial = in_part[1]
        current = None
        if partial is not None:
            labels, index = partial.labels, None
        else:
            current, labels, index = self._working_labels(task)
        try:
            patch = self._step_patch(task, step, labels, undo=action == "undo")
        except (EditError, NotFound) as exc:
            if partial is None:
                self._keep(current, labels, index)
            raise CorruptHistory(f"task {task.id}: cannot {action} revision {target}: {exc}") from exc
        try:
            rev = self._commit_patch(task, actor, labels, patch, action=action, params={}, target=target, index=index,
                                     epoch=epoch, partial=partial)
        except EditError as exc:
            raise CorruptHistory(f"task {task.id}: cannot {action} revision {target}: {exc}") from exc
        return rev, patch

    def _step_patch(self, task: Task, step: list[int], labels: np.ndarray, *, undo: bool) -> Patch:
        """One patch that undoes (or redoes) every edit of ``step`` on ``labels`` (the current labels, at the end of
        the step for an undo, at its start for a redo): the stored patches replayed on a copy of their union box."""
        patches = [self._stored_patch(task, number) for number in step]
        if len(patches) == 1:
            return patches[0].inverse() if undo else patches[0]
        patches = [p for p in patches if p.before.size]
        if not patches:
            return Patch.empty(0)
        layer = patches[0].layer
        if any(p.layer != layer for p in patches):
            raise EditError("the edits of one stroke lie on different layers")
        y0, x0 = min(p.box[0] for p in patches), min(p.box[1] for p in patches)
        y1, x1 = max(p.box[2] for p in patches), max(p.box[3] for p in patches)
        start = np.ascontiguousarray(labels[y0:y1, x0:x1, layer])
        window = start[..., None].copy()
        for p in (reversed(patches) if undo else patches):
            shifted = Patch(0, (p.box[0] - y0, p.box[1] - x0, p.box[2] - y0, p.box[3] - x0), p.before, p.after)
            (shifted.inverse() if undo else shifted).apply(window, check=True)
        return Patch.from_windows(layer, y0, x0, start, window[..., 0])

    # --- machine work ------------------------------------------------------------------------------------------
    def write_prelabel(self, task: Task, labels: np.ndarray, label: str) -> bool:
        """Make ``labels`` the crop's first revision (made by model ``label``), only if nobody has opened or edited
        the crop when the write lands: one conditional update on the task row decides, like every transition.
        Returns False (and stores nothing) when a person got there first."""
        labels = validate_labels(labels, shape=task.shape)
        key = self._labels_snapshot_key(task, 0)
        written = self._write_snapshot(task, key, labels)
        state = TaskState.prelabeled if labels.any() else TaskState.new
        first = self._revision(task, 0)
        old_key = first.labels_key
        # the same statement bumps the labels epoch: an edit that read the old labels and commits after this
        # write finds the epoch moved and is refused (LabelsReplaced), never stored on top of the new labels
        moved = self.db.execute(
            update(Task).where(Task.id == task.id, Task.revision == 0, Task.state.in_(UNTOUCHED),
                               Task.opened_at.is_(None))
            .values(state=state, labels_epoch=Task.labels_epoch + 1).execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:
            self.db.rollback()
            for k in written:
                self.storage.delete(k)
            return False
        set_committed_value(task, "state", state)
        set_committed_value(task, "labels_epoch",
                            self.db.scalar(select(Task.labels_epoch).where(Task.id == task.id)))
        first.labels_key = key
        first.action = "prelabel"
        first.params = {"prelabel": label}
        self.db.commit()
        if old_key is not None and old_key != key:
            # revision 0 is the only revision: nothing else names the old snapshot's chunks
            old = self._manifest(task, old_key).all_keys() if chunked.is_manifest(old_key) else []
            for k in old + [old_key]:
                self.storage.delete(k)
        return True
