"""The model registry: model versions as rows (lineage, data hashes, metrics, promotion) with their files in
storage, so any host (a web worker, a Dask worker, a GPU box) can fetch the version it is asked to run.

A project's current model is its promoted version; before any promotion it is the shipped starter model when this
installation has one (registered once, project-less, as "starter"), else the classic nuclear-expansion baseline.
Every version trained here records the version it was fine-tuned from (`parent`), None when trained from scratch.

Registration is race-safe: the files go under a storage prefix unique to this registration (recorded with the row,
so two registrations never write into one folder), then the row is inserted; the name's unique constraint decides
a race, and a registration that asked for the project's next name simply takes the one after. Each row records the
SHA-256 of its files: hosts cache fetched copies by it, and a shipped starter model whose files changed is
registered as a new version (``starter-2``, ...) instead of being mistaken for the old one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
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


def is_starter(version: ModelVersion | None) -> bool:
    """Whether ``version`` is (a release of) the shipped starter model."""
    return (version is not None and version.project_id is None
            and re.fullmatch(rf"{STARTER_NAME}(-\d+)?", version.name) is not None)


def _starter_rows(session: Session) -> list[ModelVersion]:
    rows = session.scalars(select(ModelVersion).where(ModelVersion.project_id.is_(None)).order_by(ModelVersion.id))
    return [r for r in rows if is_starter(r)]


def files_hash(folder) -> str:
    """SHA-256 over a model folder's files: each file's name, size and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _folder_hash(folder: str, stamp: tuple) -> str:
    return files_hash(folder)


def _stamp(folder: Path) -> tuple:
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())


def starter_version(session: Session, storage: Storage) -> ModelVersion | None:
    """The row of the shipped starter model as installed now, registered on first use (a release whose files differ
    from every registered one is a new version); None when this installation ships none and none was registered."""
    from pipeline.model.starter import starter_model_dir

    folder = starter_model_dir()
    if folder is None:
        rows = _starter_rows(session)
        return rows[-1] if rows else None
    folder = Path(folder)
    sha = _folder_hash(str(folder), _stamp(folder))
    for _ in range(5):
        rows = _starter_rows(session)
        for row in rows:
            if row.files_sha256 is None:  # registered before hashes were kept: hash its stored files once
                row.files_sha256 = _stored_hash(storage, row.path)
                session.commit()
            if row.files_sha256 == sha:
                return row
        taken = {r.name for r in rows}
        name = next(n for n in [STARTER_NAME] + [f"{STARTER_NAME}-{i}" for i in range(2, len(taken) + 3)]
                    if n not in taken)
        try:
            return register(session, storage, None, folder, name=name, parent=None,
                            note="shipped starter model" if not rows else
                            f"shipped starter model (files changed since {rows[-1].name})")
        except ValueError:
            continue  # another process registered a starter at the same moment: look again
    raise LookupError("could not register the shipped starter model (the registry kept changing)")


def _stored_hash(storage: Storage, prefix: str) -> str | None:
    import tempfile

    keys = storage.list(prefix + "/")
    if not keys:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            (Path(tmp) / key.rsplit("/", 1)[-1]).write_bytes(storage.get(key))
        return files_hash(tmp)


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


def register(session: Session, storage: Storage, project: Project | None, folder, *, name: str | None = None,
             parent: ModelVersion | None, dataset: dict | None = None, metrics: dict | None = None,
             note: str | None = None) -> ModelVersion:
    """Copy a model version folder into storage and add its row (committed). ``name`` None: the project's next
    free name (``<project>-vN``), taken again if a concurrent registration got it first; a name given and taken
    raises ValueError. Either way the files go under a prefix of their own first, so a lost race overwrites
    nothing (and its files are removed)."""
    folder = Path(folder)
    if name is None and project is None:
        raise ValueError("a model version without a project needs a name")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise ValueError(f"model version names use letters, digits, '.', '_' and '-': {name!r}")
    if name is not None and session.scalar(select(ModelVersion).where(ModelVersion.name == name)) is not None:
        raise ValueError(f"a model version named {name!r} exists already")
    config = json.loads((folder / "config.json").read_text())
    sha = files_hash(folder)
    prefix = f"models/{name or project.name}.{secrets.token_hex(6)}"
    keys = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        keys.append(f"{prefix}/{path.name}")
        storage.put(keys[-1], path.read_bytes())
    summary = {k: config.get(k) for k in ("backbone", "heads", "channels", "mpp", "imported", "model_format",
                                          "fine_tune") if k in config}
    summary["training"] = {k: v for k, v in (config.get("training") or {}).items()
                           if k in ("epochs", "best_epoch", "best_loss", "monitor", "steps_per_epoch", "seconds",
                                    "stopped_early", "fine_tune", "label_mask")}
    if dataset:
        summary["dataset"] = dataset
    if note:
        summary["note"] = note
    for _ in range(100):
        candidate = name or next_name(session, project)
        row = ModelVersion(name=candidate, path=prefix, files_sha256=sha, config=summary, metrics=metrics or {},
                           parent_id=parent.id if parent is not None else None,
                           project_id=project.id if project is not None else None, promoted=False)
        session.add(row)
        try:
            session.commit()
            return row
        except IntegrityError:  # the name's unique constraint: another registration took it meanwhile
            session.rollback()
            if name is not None:
                break
    for key in keys:
        storage.delete(key)
    raise ValueError(f"a model version named {name!r} exists already" if name is not None
                     else f"no free version name for project {project.name!r}")


def local_folder(storage: Storage, version: ModelVersion, cache_root) -> Path:
    """A local copy of the version's files (fetched once per host into ``cache_root``)."""
    return fetch_files(storage, version.name, version.path, cache_root, version.files_sha256)


def fetch_files(storage: Storage, name: str, prefix: str, cache_root, sha256: str | None = None) -> Path:
    """``local_folder`` from plain values, for workers that have no database session. The copy is cached under the
    files' content hash (a re-registered name never serves an older copy) and checked against it once fetched."""
    folder = Path(cache_root) / (f"sha256-{sha256}" if sha256 else name)
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
    if sha256 and files_hash(tmp) != sha256:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise LookupError(f"model version {name!r}: the files under {prefix}/ do not match the registered hash")
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
