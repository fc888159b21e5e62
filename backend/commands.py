"""Admin subcommands of `cellloop` that talk to the database and storage: db, users, ingest, links,
serve, demo. Heavy modules are imported inside the commands so `cellloop --help` stays instant."""
from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _config(args):
    from backend.config import Config

    overrides = {}
    if getattr(args, "instance", None):
        overrides["instance_dir"] = args.instance
    return Config.from_env(**overrides)


def _session(config):
    from backend.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(config.database_url))()


def _storage(config):
    from backend.storage import storage_from_url

    return storage_from_url(config.storage_url)


def _error(message: str):
    from pipeline.cli import CLIError

    return CLIError(message)


# --- db ------------------------------------------------------------------------------------------------------

def cmd_db(args) -> int:
    from backend import db

    config = _config(args)
    if args.action == "upgrade":
        db.upgrade(config.database_url, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            raise _error("downgrade needs a target revision (e.g. 'base')")
        db.downgrade(config.database_url, args.revision)
    print(f"database at revision {db.current_revision(config.database_url) or 'base'}")
    return 0


# --- users ---------------------------------------------------------------------------------------------------

def create_user(session, username: str, password: str, role: str):
    from sqlalchemy import select

    from backend.auth import hash_password
    from backend.models import Role, User

    try:
        role_value = Role(role)
    except ValueError:
        raise _error(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from None
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise _error(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role_value)
    session.add(user)
    session.commit()
    return user


def cmd_users(args) -> int:
    config = _config(args)
    session = _session(config)
    password = args.password or os.environ.get("CELLLOOP_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise _error("give --password or CELLLOOP_PASSWORD when not on a terminal")
        password = getpass.getpass(f"password for {args.username}: ")
    user = create_user(session, args.username, password, args.role)
    print(f"created {user.role.value} {user.username!r} (id {user.id})")
    return 0


# --- ingest / links -----------------------------------------------------------------------------------------

def ingest(session, storage, *, path, channels, name, pixel_size, crop_size, overlap, prelabel, max_pixels):
    from pipeline.io import read_image

    from backend.tasks import create_project

    paths = path if isinstance(path, list) else [path]
    image, names = read_image(paths if len(paths) > 1 else paths[0], channels, max_pixels=max_pixels)
    project = create_project(session, storage, name=name, image=image, channel_names=names,
                             pixel_size_um=pixel_size, source_path=str(paths[0]))
    tasks = []
    if crop_size:
        tasks = publish_crops(session, storage, project, image, crop_size=crop_size, overlap=overlap,
                              prelabel=prelabel)
    session.commit()
    return project, tasks


def publish_crops(session, storage, project, image, *, crop_size=270, overlap=30, prelabel="none", batch_name="batch-1"):
    """Cut the project's image into crops and make one task per crop; prelabel on the whole image first so
    crops see no edge artefacts."""
    from pipeline.crop import crop_boxes

    from backend.models import Batch
    from backend.tasks import TaskService

    labels = None
    if prelabel == "baseline":
        from pipeline.baseline import nuclear_expansion

        nuclear = _nuclear_index(project.channel_names)
        labels = nuclear_expansion(image.astype("float32"), nuclear_channel=nuclear)
    elif prelabel == "starter":
        from pipeline.model.starter import segment

        labels = segment(image, project.channel_names)
    elif prelabel != "none":
        raise _error(f"unknown prelabel method {prelabel!r} (none, baseline, starter)")
    batch = Batch(project=project, name=batch_name)
    session.add(batch)
    svc = TaskService(session, storage)
    boxes = crop_boxes(image.shape[:2], crop_size, overlap)
    tasks = []
    for i, (y0, x0, y1, x1) in enumerate(boxes, 1):
        crop_labels = None if labels is None else _relabel(labels[y0:y1, x0:x1])
        tasks.append(svc.create_task(batch, (y0, x0, y1, x1), image[y0:y1, x0:x1], crop_labels))
        if sys.stderr.isatty():
            print(f"\rcropping: {i}/{len(boxes)} tasks", end="", file=sys.stderr, flush=True)
    print(("\r" if sys.stderr.isatty() else "") + f"cropped {len(boxes)} tasks", file=sys.stderr)
    return tasks


def _nuclear_index(names) -> int:
    for i, n in enumerate(names):
        if n.lower() in {"nuclear", "dapi", "hh3", "hoechst", "nuclei", "nucleus"}:
            return i
    return 0


def _relabel(crop):
    # keep cell ids shared between the layers, but consecutive within the crop
    import numpy as np

    ids, inverse = np.unique(crop, return_inverse=True)
    return inverse.reshape(crop.shape).astype(np.int32) if ids[0] == 0 else (inverse.reshape(crop.shape) + 1).astype(np.int32)


def project_tasks(session, project_name: str | None = None):
    from sqlalchemy import select

    from backend.models import Batch, Project, Task

    query = select(Task).join(Batch).join(Project).order_by(Task.id)
    if project_name:
        query = query.where(Project.name == project_name)
    return session.scalars(query).all()


def print_links(config, tasks, out=None) -> None:
    """Task links as CSV (the format crowd platforms import)."""
    from backend.app import create_app
    from backend.auth import make_task_token

    app = create_app(config)
    out = out or sys.stdout
    with app.app_context():
        print("task_id,y0,x0,y1,x1,url", file=out)
        for t in tasks:
            print(f"{t.id},{t.y0},{t.x0},{t.y1},{t.x1},{config.base_url}/task/{make_task_token(t)}", file=out)


def cmd_ingest(args) -> int:
    config = _config(args)
    session = _session(config)
    name = args.name or Path(args.image[0]).stem.split(".")[0]
    channels = args.channels.split(",") if args.channels else None
    project, tasks = ingest(session, _storage(config), path=[Path(p) for p in args.image], channels=channels,
                            name=name, pixel_size=args.pixel_size, crop_size=args.crop, overlap=args.overlap,
                            prelabel=args.prelabel, max_pixels=config.max_image_pixels)
    print(f"project {project.name!r} (id {project.id}): {project.height}x{project.width}, "
          f"channels {', '.join(project.channel_names)}; {len(tasks)} tasks")
    return 0


def cmd_links(args) -> int:
    config = _config(args)
    session = _session(config)
    tasks = project_tasks(session, args.project)
    if not tasks:
        raise _error("no tasks" + (f" in project {args.project!r}" if args.project else ""))
    if args.out:
        with open(args.out, "w") as out:
            print_links(config, tasks, out)
        print(f"{len(tasks)} task links written to {args.out}")
    else:
        print_links(config, tasks)
    return 0


# --- serve / demo -------------------------------------------------------------------------------------------

def serve(config, *, host: str, port: int, workers: int) -> int:
    os.environ["CELLLOOP_INSTANCE_DIR"] = str(config.instance_dir)
    os.environ["CELLLOOP_DATABASE_URL"] = config.database_url
    os.environ["CELLLOOP_STORAGE_URL"] = config.storage_url
    os.environ.setdefault("CELLLOOP_BASE_URL", f"http://{host}:{port}")
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"{host}:{port}",
            "--access-logfile", "-", "backend.app:create_app()"]
    print(f"CellLoop serving on http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_serve(args) -> int:
    config = _config(args)
    from backend import db

    db.upgrade(config.database_url)
    return serve(config, host=args.host, port=args.port, workers=args.workers)


def demo_image(source: str):
    """The demo's image and channel names: a real Vectra tissue image when the shared sample data is
    beside the repo, the synthetic generator otherwise."""
    from pipeline.io import read_image

    vectra = SHARED_DATA / "vectra" / "image3.tif"
    if source == "vectra" or (source == "auto" and vectra.exists()):
        image, _ = read_image(vectra)
        return image[..., [1, 0]].astype("float32"), ["nuclear", "membrane"], "vectra image3"
    if source in ("synthetic", "auto"):
        from pipeline.synthetic import make_tissue

        X, _ = make_tissue((540, 540), seed=7)
        return X, ["nuclear", "membrane"], "synthetic tissue"
    path = Path(source)
    image, names = read_image(path)
    return image, names, str(path)


def cmd_demo(args) -> int:
    from sqlalchemy import select

    from backend import db
    from backend.models import Project, User

    config = _config(args)
    config.base_url = f"http://{args.host}:{args.port}"
    db.upgrade(config.database_url)
    session = _session(config)
    storage = _storage(config)
    password = args.password or secrets.token_urlsafe(9)
    if session.scalar(select(User).where(User.username == "reviewer")) is None:
        create_user(session, "reviewer", password, "reviewer")
        create_user(session, "admin", password, "admin")
        print(f"users: reviewer / admin, password: {password}")
    else:
        print("users reviewer / admin exist already (password unchanged)")
    project = session.scalar(select(Project).where(Project.name == "demo"))
    if project is None:
        image, names, what = demo_image(args.source)
        from backend.tasks import create_project

        project = create_project(session, storage, name="demo", image=image, channel_names=names, pixel_size_um=0.5,
                                 source_path=what)
        tasks = publish_crops(session, storage, project, image, crop_size=270, overlap=30, prelabel=args.prelabel)
        session.commit()
        print(f"demo project from {what}: {image.shape[0]}x{image.shape[1]}, {len(tasks)} tasks")
    tasks = project_tasks(session, "demo")
    print("annotator links (CSV for a crowd platform):")
    print_links(config, tasks)
    print(f"reviewers log in at {config.base_url}/ ; open an annotator link above to annotate")
    if args.no_serve:
        return 0
    return serve(config, host=args.host, port=args.port, workers=args.workers)


def _default_demo_prelabel() -> str:
    from pipeline.model.starter import starter_model_dir

    return "starter" if starter_model_dir() is not None else "baseline"


def register(sub: argparse._SubParsersAction) -> None:
    def common(p):
        p.add_argument("--instance", help="instance folder holding the SQLite file and local storage "
                       "(default: $CELLLOOP_INSTANCE_DIR or ./cellloop-data)")
        return p

    p = common(sub.add_parser("db", help="database migrations"))
    p.add_argument("action", choices=["upgrade", "downgrade", "current"])
    p.add_argument("revision", nargs="?", help="target revision (default head for upgrade)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("users", help="manage users")
    users = p.add_subparsers(dest="users_action", required=True)
    c = common(users.add_parser("create", help="create a user"))
    c.add_argument("username")
    c.add_argument("--role", required=True, choices=["annotator", "reviewer", "admin"])
    c.add_argument("--password", help="password (or $CELLLOOP_PASSWORD, or asked on the terminal)")
    c.set_defaults(func=cmd_users)

    p = common(sub.add_parser("ingest", help="add an image as a new project (optionally cut into tasks)"))
    p.add_argument("image", nargs="+", help="image file (TIFF/OME-TIFF/NPZ/PNG), or one file per channel")
    p.add_argument("--channels", help="comma-separated channel names or indices to keep, in order")
    p.add_argument("--name", help="project name (default: file name)")
    p.add_argument("--pixel-size", type=float, help="microns per pixel")
    p.add_argument("--crop", type=int, default=0, metavar="PX", help="also cut into PX-sized tasks (e.g. 270)")
    p.add_argument("--overlap", type=int, default=30, metavar="PX")
    p.add_argument("--prelabel", default="none", choices=["none", "baseline", "starter"])
    p.set_defaults(func=cmd_ingest)

    p = common(sub.add_parser("links", help="print task links as CSV for a crowd platform"))
    p.add_argument("--project")
    p.add_argument("--out", help="write the CSV here instead of stdout")
    p.set_defaults(func=cmd_links)

    def serving(p):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--workers", type=int, default=int(os.environ.get("CELLLOOP_WORKERS", "2")))
        return p

    p = serving(common(sub.add_parser("serve", help="run the annotation server (gunicorn)")))
    p.set_defaults(func=cmd_serve)

    p = serving(common(sub.add_parser("demo", help="create a demo project and serve it")))
    p.add_argument("--source", default="auto", help="auto (Vectra sample if present, else synthetic), "
                   "vectra, synthetic, or an image path")
    p.add_argument("--prelabel", default=_default_demo_prelabel(), choices=["none", "baseline", "starter"])
    p.add_argument("--password", help="password for the demo reviewer/admin (default: random, printed)")
    p.add_argument("--no-serve", action="store_true", help="set up and print links, but do not serve")
    p.set_defaults(func=cmd_demo)
