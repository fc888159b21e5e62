"""What every loop step shares: its one-line error, progress bars, and finding batches and their images."""
from __future__ import annotations

import sys

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.store.models import Batch, Image, Project, Task
from pipeline.cli import CLIError


class LoopError(CLIError):
    """A loop step cannot run as asked (printed as one line by the CLI)."""


def progress(total: int, desc: str, unit: str = "image"):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)


def get_batch(session: Session, project: Project | None, name: str) -> Batch:
    query = select(Batch).where(Batch.name == name)
    if project is not None:
        query = query.where(Batch.project_id == project.id)
    found = list(session.scalars(query))
    if not found:
        raise LoopError(f"no batch named {name!r}" + (f" in project {project.name!r}" if project else ""))
    if len(found) > 1:
        raise LoopError(f"several projects have a batch named {name!r}; name the project with --project")
    return found[0]


def batch_images(session: Session, batch: Batch) -> list[Image]:
    ids = select(Task.image_id).where(Task.batch_id == batch.id).distinct()
    return list(session.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))


def count_cells(labels: np.ndarray) -> int:
    return int(len(np.unique(labels[..., 0])) - 1)
