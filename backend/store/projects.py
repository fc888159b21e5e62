"""Projects and their source images: a project is a channel panel and a model lineage; images are added to it
over time (`cellloop ingest`), each stored once, its channels in the project's order."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.store.arrays import encode_array, validate_image
from backend.store.models import Image, Project
from backend.store.storage import Storage



def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise LookupError(f"no project named {name!r}")
    return project


def create_project(session: Session, *, name: str, channel_names: list[str],
                   model_channels: list[str] | None = None) -> Project:
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise ValueError(f"a project named {name!r} already exists")
    names = [str(n) for n in channel_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"channel names must be distinct and non-empty, got {names}")
    if model_channels is not None:
        unknown = [c for c in model_channels if c not in names]
        if unknown:
            raise ValueError(f"model channels {unknown} are not among the project's channels {names}")
    project = Project(name=name, channel_names=names, model_channels=list(model_channels) if model_channels else None)
    session.add(project)
    session.flush()
    return project


def add_image(session: Session, storage: Storage, project: Project, image: np.ndarray, *, name: str,
              pixel_size_um: float | None = None, tissue: str | None = None, platform: str | None = None,
              source_path: str | None = None) -> Image:
    """Store ``image`` (H, W, C), its channels already in the project's order, as a new image of ``project``."""
    image = validate_image(image, max_pixels=None)
    if image.shape[2] != len(project.channel_names):
        raise ValueError(f"image of shape {image.shape} does not match the project's {len(project.channel_names)} "
                         f"channels ({', '.join(project.channel_names)})")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    if session.scalar(select(Image).where(Image.project_id == project.id, Image.name == name)) is not None:
        raise ValueError(f"project {project.name!r} already has an image named {name!r}")
    row = Image(project=project, name=name, image_key="", height=int(image.shape[0]), width=int(image.shape[1]),
                pixel_size_um=pixel_size_um, tissue=tissue, platform=platform, source_path=source_path)
    session.add(row)
    session.flush()
    row.image_key = f"projects/{project.id}/images/{row.id}/image.npy.gz"
    storage.put(row.image_key, encode_array(image))
    return row


def read_image(storage: Storage, row: Image) -> np.ndarray:
    """The whole image in memory. A slide stored in chunks is read region by region instead where it can be
    (``backend.store.slides.StoredSlide``); this assembles it whole for the steps that still need it so."""
    from backend.store.arrays import decode_array

    if row.chunk_size:
        from backend.store.slides import StoredSlide

        return StoredSlide.of("", row, storage).read(0, row.height, 0, row.width)
    return decode_array(storage.get(row.image_key), max_pixels=None)


def model_channel_indices(project: Project, n_model_channels: int = 2) -> list[int]:
    """Indices of the image channels that feed the model, in the model's order ([nuclear, membrane])."""
    names = list(project.channel_names)
    if project.model_channels:
        return [names.index(c) for c in project.model_channels]
    if n_model_channels != 2:
        raise ValueError(f"project {project.name!r} does not say which {n_model_channels} channels feed the model")
    from pipeline.channels import choose_model_channels

    choice = choose_model_channels(names)
    # a one-channel panel feeds its nuclear stain twice rather than inventing a membrane channel
    return [choice.nuclear, choice.nuclear if choice.membrane is None else choice.membrane]


def project_from_image(session: Session, storage: Storage, *, name: str, image: np.ndarray,
                       channel_names: list[str], pixel_size_um: float | None = None, source_path: str | None = None) -> Project:
    """A project holding one image (named after the project); `add_image` adds more."""
    if image.ndim != 3 or image.shape[2] != len(channel_names):
        raise ValueError(f"image of shape {image.shape} does not match {len(channel_names)} channel names")
    project = create_project(session, name=name, channel_names=channel_names)
    add_image(session, storage, project, image, name=name, pixel_size_um=pixel_size_um, source_path=source_path)
    return project
