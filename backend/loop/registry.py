"""The model registry: model versions as rows (lineage, data hashes, metrics, promotion) with their files in
storage, so any host (a web worker, a Dask worker, a GPU box) can fetch the version it is asked to run.

A project's current model is its promoted version; before any promotion it is the shipped starter model when this
installation has one (registered once, project-less, as "starter"), else the classic nuclear-expansion baseline.
Every version trained here records the version it was fine-tuned from (`parent`), None when trained from scratch.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.store.models import ModelVersion, Project, utcnow
from backend.store.storage import Storage

STARTER_NAME = "starter"
# prelabel / evaluation choices that are not registered versions
BASELINE = "baseline"
NO_MODEL = "none"


@dataclass(frozen=True)
class ModelChoice:
    """What segments a project's images: a registered version, the baseline, or nothing."""

    kind: str  # "version", BASELINE or NO_MODEL
    version: ModelVersion | None = None

    @property
    def label(self) -> str:
        return self.version.name if self.version is not None else self.kind


def promoted_version(session: Session, project: Project) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.project_id == project.id,
                                                     ModelVersion.promoted.is_(True))
                          .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc()).limit(1))


def starter_version(session: Session, storage: Storage) -> ModelVersion | None:
    """The shipped starter model's row, registered on first use; None when this installation ships none."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == STARTER_NAME))
    if row is not None:
        return row
    from pipeline.model.starter import starter_model_dir

    folder = starter_model_dir()
    if folder is None:
        return None
    return register(session, storage, None, folder, name=STARTER_NAME, parent=None, note="shipped starter model")


def current_model(session: Session, storage: Storage, project: Project) -> ModelChoice:
    version = promoted_version(session, project) or starter_version(session, storage)
    return ModelChoice("version", version) if version is not None else ModelChoice(BASELINE)


def get_version(session: Session, name: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None:
        raise LookupError(f"no model version named {name!r} (see `cellloop models list`)")
    return row


def resolve(session: Session, storage: Storage, project: Project, spec: str) -> ModelChoice:
    """``spec``: "current", "baseline", "none" or a version name."""
    if spec == "current":
        return current_model(session, storage, project)
    if spec in (BASELINE, NO_MODEL):
        return ModelChoice(spec)
    version = get_version(session, spec)
    if version.project_id not in (None, project.id):
        raise ValueError(f"model version {spec!r} belongs to another project")
    return ModelChoice("version", version)


def versions(session: Session, project: Project | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.id)
    if project is not None:
        query = query.where((ModelVersion.project_id == project.id) | (ModelVersion.project_id.is_(None)))
    return list(session.scalars(query))


def next_name(session: Session, project: Project) -> str:
    taken = set(session.scalars(select(ModelVersion.name)))
    n = 1
    while f"{project.name}-v{n}" in taken:
        n += 1
    return f"{project.name}-v{n}"


def register(session: Session, storage: Storage, project: Project | None, folder, *, name: str,
             parent: ModelVersion | None, dataset: dict | None = None, metrics: dict | None = None,
             note: str | None = None) -> ModelVersion:
    """Copy a model version folder into storage and add its row (committed)."""
    folder = Path(folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise ValueError(f"model version names use letters, digits, '.', '_' and '-': {name!r}")
    if session.scalar(select(ModelVersion).where(ModelVersion.name == name)) is not None:
        raise ValueError(f"a model version named {name!r} exists already")
    config = json.loads((folder / "config.json").read_text())
    prefix = f"models/{name}"
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        storage.put(f"{prefix}/{path.name}", path.read_bytes())
    summary = {k: config.get(k) for k in ("backbone", "heads", "channels", "mpp", "imported", "model_format",
                                          "fine_tune") if k in config}
    summary["training"] = {k: v for k, v in (config.get("training") or {}).items()
                           if k in ("epochs", "best_epoch", "best_loss", "monitor", "steps_per_epoch", "seconds",
                                    "stopped_early", "fine_tune", "label_mask")}
    if dataset:
        summary["dataset"] = dataset
    if note:
        summary["note"] = note
    row = ModelVersion(name=name, path=prefix, config=summary, metrics=metrics or {},
                       parent_id=parent.id if parent is not None else None,
                       project_id=project.id if project is not None else None, promoted=False)
    session.add(row)
    session.commit()
    return row


def local_folder(storage: Storage, version: ModelVersion, cache_root) -> Path:
    """A local copy of the version's files (fetched once per host into ``cache_root``)."""
    return fetch_files(storage, version.name, version.path, cache_root)


def fetch_files(storage: Storage, name: str, prefix: str, cache_root) -> Path:
    """``local_folder`` from plain values, for workers that have no database session."""
    folder = Path(cache_root) / name
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in ("model.keras", "saved_model.tar")):
        return folder
    # a private partial folder: two workers of one host may fetch the same version at once
    tmp = folder.with_name(f"{folder.name}.partial-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True, exist_ok=True)
    keys = storage.list(prefix + "/")
    if not keys:
        raise LookupError(f"model version {name!r}: no files in storage under {prefix}/")
    for key in keys:
        (tmp / key.rsplit("/", 1)[-1]).write_bytes(storage.get(key))
    try:
        tmp.rename(folder)
    except OSError:  # another worker finished first: its copy is the same files
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def import_version(session: Session, storage: Storage, project: Project, source, cache_root, *,
                   name: str | None = None, mpp: float = 0.5) -> ModelVersion:
    """Check a model made elsewhere (``.keras``, ``.h5`` or a SavedModel folder with Mesmer's signature) and
    register it in ``project`` as a lineage root (no parent). Raises ValueError / FileNotFoundError in one line."""
    import shutil

    from pipeline.model import importing

    source = Path(source)
    if name is None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name.split(".")[0]).strip("-._") or "imported"
        name = f"{project.name}-{stem}"
        taken = set(session.scalars(select(ModelVersion.name)))
        base, n = name, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise ValueError(f"model version names use letters, digits, '.', '_' and '-': {name!r}")
    if session.scalar(select(ModelVersion).where(ModelVersion.name == name)) is not None:
        raise ValueError(f"a model version named {name!r} exists already")
    work = Path(cache_root) / f".import-{secrets.token_hex(4)}"
    try:
        folder, config = importing.import_model(source, work / name, mpp=mpp, name=name)
        fmt = config["imported"]["format"]
        note = f"imported from {source.name} ({fmt})" + ("" if config["fine_tune"] else "; inference only")
        return register(session, storage, project, folder, name=name, parent=None, note=note)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record_metrics(session: Session, version: ModelVersion, key: str, metrics: dict) -> None:
    version.metrics = {**(version.metrics or {}), key: metrics}
    session.commit()


def promote(session: Session, project: Project, version: ModelVersion) -> None:
    """Make ``version`` the project's current model (the previous one stays in the registry)."""
    if version.project_id != project.id:
        raise ValueError(f"model version {version.name!r} does not belong to project {project.name!r}")
    for other in session.scalars(select(ModelVersion).where(ModelVersion.project_id == project.id,
                                                            ModelVersion.promoted.is_(True))):
        other.promoted = False
    version.promoted = True
    version.promoted_at = utcnow()
    session.commit()


def lineage(session: Session, version: ModelVersion) -> list[ModelVersion]:
    """The version and its ancestors, newest first."""
    chain, seen = [], set()
    while version is not None and version.id not in seen:
        chain.append(version)
        seen.add(version.id)
        version = session.get(ModelVersion, version.parent_id) if version.parent_id else None
    return chain
