"""`cellloop ingest-slide`: add a whole slide (OME-TIFF, tiled TIFF, OME-Zarr) to a project, read lazily and stored in
chunks, never held in memory. `cellloop batch create` then cuts its crops chunk by chunk and `cellloop prelabel`
predicts it in blocks (on Dask with --scheduler); `cellloop predict --slide` segments a slide file without a project."""
from __future__ import annotations

from pathlib import Path

from backend.cli.admin_commands import (_config, _error, _image_stem, _session, _storage, model_input_line,
                                        with_instance)


def register(sub) -> None:
    p = with_instance(sub.add_parser("ingest-slide", help="add a whole slide to a project, stored in chunks (never read "
                                     "whole)"))
    p.add_argument("slide", help="OME-TIFF (pyramidal or not), tiled TIFF or OME-Zarr folder")
    p.add_argument("--project", help="project name (default: --name or the file's name); made on first use")
    p.add_argument("--channels", help="comma-separated channel names or indices to keep, in order (default: all "
                   "for a new project, the project's channels by name for later slides)")
    p.add_argument("--model-channels", help="the channels that feed the model, in its order (new projects)")
    p.add_argument("--name", help="image name (default: file name)")
    p.add_argument("--pixel-size", type=float, help="microns per pixel (default: the file's, when it says)")
    p.add_argument("--tissue")
    p.add_argument("--platform")
    p.set_defaults(func=cmd_ingest_slide)


def cmd_ingest_slide(args) -> int:
    from sqlalchemy import select

    from pipeline.slide import open_slide

    from backend.store.models import Project
    from backend.store.projects import create_project
    from backend.store.slides import add_slide
    from backend.store.storage import WriteLog

    path = Path(args.slide)
    if not path.exists():
        raise _error(f"slide not found: {path}")
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise _error("--pixel-size must be positive")
    config = _config(args)
    session = _session(config)
    storage = _storage(config)
    name = args.name or _image_stem(path)
    project_name = args.project or name
    with open_slide(path) as slide:
        project = session.scalar(select(Project).where(Project.name == project_name))
        wanted = (args.channels.split(",") if args.channels else
                  (project.channel_names if project is not None else list(range(slide.n_channels))))
        try:
            channels = [slide.channel_index(c.strip() if isinstance(c, str) else c) for c in wanted]
        except ValueError as exc:
            hint = "" if project is None or args.channels else \
                f" (project {project.name!r} has channels {', '.join(project.channel_names)}; map them with --channels)"
            raise _error(f"{exc}{hint}") from None
        names = [slide.channel_names[c] for c in channels]
        writes = WriteLog(storage)
        row = None
        try:
            if project is None:
                project = create_project(session, name=project_name, channel_names=names,
                                         model_channels=args.model_channels.split(",") if args.model_channels else None)
            row = add_slide(session, writes, project, slide, channels, name=name,
                            pixel_size_um=args.pixel_size or slide.pixel_size_um, tissue=args.tissue,
                            platform=args.platform, source_path=str(path))
            session.commit()
        except BaseException:
            session.rollback()
            writes.take_back()  # every chunk this ingest stored: a failed ingest leaves no half slide
            raise
    print(f"project {project.name!r} (id {project.id}): slide {row.name!r} {row.height}x{row.width}, "
          f"{len(channels)} channels ({', '.join(names)}), levels {row.levels}, stored in "
          f"{-(-row.height // row.chunk_size) * -(-row.width // row.chunk_size)} chunks of {row.chunk_size} px")
    print(model_input_line(project))
    return 0
