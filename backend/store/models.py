"""Database rows: users, projects and their images, batches, tasks, revisions, reviews, task events, model
versions, dataset tiles.

Arrays never live in the database: rows hold storage keys. Times are timezone-aware UTC.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    MetaData,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    # named constraints: later migrations (batch mode on SQLite) can find and alter them by name
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Role(str, enum.Enum):
    annotator = "annotator"
    reviewer = "reviewer"
    admin = "admin"


class TaskState(str, enum.Enum):
    new = "new"
    prelabeled = "prelabeled"
    assigned = "assigned"
    submitted = "submitted"
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"


def _enum(cls, name):
    # Stored as plain strings (no native PG enum): adding a state later is a data change, not a type migration.
    return Enum(cls, name=name, native_enum=False, length=16, validate_strings=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # a session cookie names the version it was signed under; bumping it ends every older session
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # flask-login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)

    def has_role(self, *roles: Role) -> bool:
        # admins can do anything a reviewer can
        return self.role in roles or self.role is Role.admin


class Project(Base):
    """A channel panel and a model lineage: many source images share the channels; the promoted model
    version is the project's current model."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    channel_names: Mapped[list] = mapped_column(JSON)
    # the image channels that feed the model, in the model's order ([nuclear, membrane] for Mesmer);
    # None: guessed from the channel names when first needed
    model_channels: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    batches: Mapped[list["Batch"]] = relationship(back_populates="project")
    images: Mapped[list["Image"]] = relationship(back_populates="project", order_by="Image.id")


class Image(Base):
    """One source image of a project, its channels in the project's order; `labels_key` holds the labels
    stitched from approved crops, `coverage_key` the mask of pixels those crops cover."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    image_key: Mapped[str] = mapped_column(String(1024))
    labels_key: Mapped[str | None] = mapped_column(String(1024))
    coverage_key: Mapped[str | None] = mapped_column(String(1024))
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    pixel_size_um: Mapped[float | None] = mapped_column(Float)
    tissue: Mapped[str | None] = mapped_column(String(200))
    platform: Mapped[str | None] = mapped_column(String(200))
    source_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stitched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # a whole slide is stored as chunk_size² chunks under image_key (a prefix; backend.store.slides), never whole;
    # levels: the (height, width) of each level of the source file's pyramid, full resolution first
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    levels: Mapped[list | None] = mapped_column(JSON)

    project: Mapped[Project] = relationship(back_populates="images")
    __table_args__ = (UniqueConstraint("project_id", "name"),)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # the storage prefix of its files, unique per registration (two registrations never share a folder)
    path: Mapped[str] = mapped_column(String(1024))
    # SHA-256 over the files (names and bytes): fetched copies are cached by it; None for rows older than 0005
    files_sha256: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    # None: not tied to one project (the shipped starter model)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    parent: Mapped["ModelVersion | None"] = relationship(remote_side=[id])


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # the model version that prelabelled the batch (None with `prelabel` "baseline" or "none")
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    prelabel: Mapped[str | None] = mapped_column(String(200))
    crop_size: Mapped[int | None] = mapped_column(Integer)
    overlap: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prelabeled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stitched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # what `cellloop cycle` did with this batch: dataset hashes, the version trained, F1s, promotion
    cycle: Mapped[dict | None] = mapped_column(JSON)

    project: Mapped[Project] = relationship(back_populates="batches")
    model_version: Mapped[ModelVersion | None] = relationship()
    tasks: Mapped[list["Task"]] = relationship(back_populates="batch")
    __table_args__ = (UniqueConstraint("project_id", "name"),)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    # the source image the crop comes from (None only for tasks made without one, e.g. by older code)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    # crop box in the source image, half-open
    y0: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    state: Mapped[TaskState] = mapped_column(_enum(TaskState, "task_state"), default=TaskState.new, index=True)
    image_key: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # bumped by every machine write of revision 0 (prelabel): an edit commits only if the epoch is still the one
    # it read with the labels, so an edit computed on replaced labels never lands on top of them
    labels_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a crowd worker has no account: the platform's worker id is kept as a reference
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    assignee_ref: Mapped[str | None] = mapped_column(String(200))
    # bumping the nonce revokes every link issued for this task
    token_nonce: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    time_open_s: Mapped[float] = mapped_column(Float, default=0.0)
    # the crop's model maps (uint8 (H, W, 4), see backend.tasks.maps) and the model version that made them, kept
    # beside its prelabel for the assist tools; None when the prelabel had no maps (baseline, none, older tasks)
    maps_key: Mapped[str | None] = mapped_column(String(1024))
    maps_model: Mapped[str | None] = mapped_column(String(200))
    # "crop": a crop for the crowd; "qc": the expert's whole-image QC of a stitched image (see ImageQC)
    kind: Mapped[str] = mapped_column(String(16), default="crop", server_default="crop")
    # crowd quality (issue 25). The replicas of one crop share ``crop_group`` (the id of the crop's first task),
    # and so does the consensus task merged from them. ``crowd_role``: None for a plain crop, "replica", "gold" (a
    # honeypot copy of a gold truth, ``gold_id``) or "consensus". Never shown to a worker: a gold task must look
    # like any other.
    crop_group: Mapped[int | None] = mapped_column(Integer, index=True)
    crowd_role: Mapped[str | None] = mapped_column(String(16))
    gold_id: Mapped[int | None] = mapped_column(Integer)
    # how hard the prelabel's model found the crop (pipeline.difficulty), computed at prelabel time
    difficulty: Mapped[float | None] = mapped_column(Float)
    difficulty_detail: Mapped[dict | None] = mapped_column(JSON)
    # big tasks are also stored in chunks of this many px a side (backend.tasks.chunked); None: read whole
    chunk_size: Mapped[int | None] = mapped_column(Integer)

    batch: Mapped[Batch] = relationship(back_populates="tasks")
    source_image: Mapped[Image | None] = relationship()
    assignee: Mapped[User | None] = relationship()
    revisions: Mapped[list["Revision"]] = relationship(back_populates="task", order_by="Revision.number")

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.y0, self.x0, self.y1, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


class Revision(Base):
    """One label change. Revision 0 is the initial (pre-)labelling; every edit, undo and redo adds one."""

    __tablename__ = "revisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    # for undo/redo: the revision whose patch this one reverts or re-applies
    target: Mapped[int | None] = mapped_column(Integer)
    # a full snapshot of the labels after this revision; None when only the patch was stored
    # (large tasks: see TaskService, SNAPSHOT_EVERY)
    labels_key: Mapped[str | None] = mapped_column(String(1024))
    patch_key: Mapped[str | None] = mapped_column(String(1024))
    # a small patch may live in its row instead (CELLLOOP_PATCH_IN_ROW_BYTES): the edit then writes no object at
    # all, only this row; deferred, so listing revisions never reads their patches
    patch_bytes: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    author_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    task: Mapped[Task] = relationship(back_populates="revisions")
    __table_args__ = (UniqueConstraint("task_id", "number"),)


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # where the comment is pinned: {"point": [y, x]} or {"cell": id, "layer": 0|1} (None: the whole crop)
    pin: Mapped[dict | None] = mapped_column(JSON)

    reviewer: Mapped[User] = relationship()


class TaskEvent(Base):
    """Audit trail of workflow transitions: who moved the task, from which state, when, after how long open."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    actor_ref: Mapped[str | None] = mapped_column(String(200))
    time_open_s: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetTile(Base):
    """A tile of a source image (on a fixed grid) and the dataset split it belongs to. Once written a tile's
    split never changes, so a test tile stays in test across cycles and models are compared on the same data."""

    __tablename__ = "dataset_tiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    y0: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("image_id", "y0", "x0", "size"),)


class DatasetBlock(Base):
    """A spatial block of a source image (``size`` px on a fixed grid from the origin, one size per image) and the
    dataset split it belongs to, forever: a tile takes the split of the blocks it lies in, so no region of an image is
    in two splits and the test area stays the same whatever tile size a later dataset uses."""

    __tablename__ = "dataset_blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    y0: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("image_id", "y0", "x0"),)


class ImageQC(Base):
    """The expert's whole-image QC of a stitched image: its QC task (a task of kind "qc" over the whole image), the
    stitched labels the task was last refreshed from (what the expert's edits are measured against when the
    image is stitched again), the conflicts stitch listed, each with a `resolved` flag, and the crop seams."""

    __tablename__ = "image_qc"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    base_labels_key: Mapped[str] = mapped_column(String(1024))
    conflicts: Mapped[list] = mapped_column(JSON, default=list)
    seams: Mapped[list] = mapped_column(JSON, default=list)
    stitched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    image: Mapped[Image] = relationship()
    task: Mapped[Task] = relationship()


class GoldTruth(Base):
    """An expert-approved crop kept as a honeypot: the labels it starts from (its prelabel) and its truth (the
    approved labels). Publishing mixes copies of it (tasks with ``crowd_role`` "gold") into a batch."""

    __tablename__ = "gold_truths"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    source_task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    truth_key: Mapped[str] = mapped_column(String(1024))
    start_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    source_task: Mapped[Task] = relationship()


class GoldScore(Base):
    """A worker's submitted gold task scored against its truth (pipeline.metrics F1 per layer; ``f1`` their mean)."""

    __tablename__ = "gold_scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    worker_ref: Mapped[str | None] = mapped_column(String(200), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    f1: Mapped[float] = mapped_column(Float)
    f1_layers: Mapped[list] = mapped_column(JSON)
    detail: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CropAgreement(Base):
    """The replicas of one crop compared: pairwise F1 of every pair of replicas (``pairs``: [task a, task b, f1]),
    their mean (``agreement``), and what consensus did: "merged" (into ``consensus_task_id``) or "expert" (too
    little agreement: the replicas wait for an expert first)."""

    __tablename__ = "crop_agreements"

    id: Mapped[int] = mapped_column(primary_key=True)
    crop_group: Mapped[int] = mapped_column(Integer, unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    agreement: Mapped[float] = mapped_column(Float)
    pairs: Mapped[list] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(16))
    consensus_task_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
