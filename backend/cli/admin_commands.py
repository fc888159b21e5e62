"""Admin subcommands of `cellloop` that talk to the database and storage: db, users, ingest, links,
serve, demo. Heavy modules are imported inside the commands so `cellloop --help` stays instant."""
from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


INSTANCE_FOLDER = "cellloop-data"


def _creates_instance(args) -> bool:
    # only these make a new instance; every other command works on one that exists
    return args.command == "demo" or (args.command == "db" and getattr(args, "action", None) == "upgrade")


def find_instance(args) -> tuple[Path, str]:
    """The instance folder a command works on, and how it was found: --instance, $CELLLOOP_INSTANCE_DIR, or a
    ./cellloop-data in this folder or one above it (as git finds its repository). Nothing found: only `db
    upgrade` and `demo` make ./cellloop-data here; any other command stops, so a command typed in the wrong
    folder never starts a second, empty instance."""
    if getattr(args, "instance", None):
        return Path(args.instance).resolve(), "--instance"
    if os.environ.get("CELLLOOP_INSTANCE_DIR"):
        return Path(os.environ["CELLLOOP_INSTANCE_DIR"]).resolve(), "$CELLLOOP_INSTANCE_DIR"
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / INSTANCE_FOLDER).is_dir():
            return folder / INSTANCE_FOLDER, "this folder" if folder == cwd else "a folder above this one"
    if _creates_instance(args) or os.environ.get("CELLLOOP_DATABASE_URL"):
        return cwd / INSTANCE_FOLDER, "new"
    raise _error(f"no CellLoop instance here: no ./{INSTANCE_FOLDER} in {cwd} or above it, and "
                 "$CELLLOOP_INSTANCE_DIR is not set; cd to the folder holding it, pass --instance DIR, or make "
                 "one here with `cellloop db upgrade` (or `cellloop demo`)")


def _config(args):
    from backend.config import Config

    folder, source = find_instance(args)
    if source == "a folder above this one":
        print(f"cellloop: using the instance {folder} (found above this folder)", file=sys.stderr)
    config = Config.from_env(instance_dir=folder)
    config.extra["instance_source"] = source
    _apply_settings(config)
    return config


SETTINGS_FILE = "settings.json"
# settings an admin sets once per instance (`cellloop settings set`); the environment still wins
SETTINGS = {"base_url": "CELLLOOP_BASE_URL"}


def read_settings(instance_dir: Path) -> dict:
    import json

    path = Path(instance_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise _error(f"{path} is not valid JSON; fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _apply_settings(config) -> None:
    settings = read_settings(config.instance_dir)
    for key, env in SETTINGS.items():
        if key in settings and not os.environ.get(env):
            setattr(config, key, settings[key])


def _check_base_url(url: str) -> str:
    import re

    if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?$", url or ""):
        raise _error(f"base URL must look like https://host[:port][/path], got {url!r}")
    return url.rstrip("/")


def write_setting(instance_dir: Path, key: str, value: str) -> None:
    import json

    path = Path(instance_dir) / SETTINGS_FILE
    settings = read_settings(instance_dir)
    settings[key] = value
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(tmp, path)


def _session(config):
    from backend.store.db import make_engine, make_sessionmaker

    _check_migrated(config.database_url)
    return make_sessionmaker(make_engine(config.database_url))()


def _check_migrated(url: str) -> None:
    """Commands that read or write rows need the schema this code was written for."""
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    from backend.store import db

    try:
        current = db.current_revision(url)
    except SQLAlchemyError as exc:
        raise _error(f"cannot reach the database: {str(exc.orig or exc).splitlines()[0]}") from None
    head = ScriptDirectory.from_config(db.alembic_config(url)).get_current_head()
    if current is None:
        raise _error(f"the database {_shown_url(url)} has no schema yet: run `cellloop db upgrade` first")
    if current != head:
        raise _error(f"the database is at schema {current}, this version needs {head}: run `cellloop db upgrade`")


def _shown_url(url: str) -> str:
    # a password in a database URL never reaches the terminal
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _storage(config):
    from backend.store.storage import StorageError, storage_from_url

    storage = storage_from_url(config.storage_url)
    try:
        storage.exists("cellloop-reachability-check")
    except StorageError as exc:
        raise _error(f"storage at {config.storage_url.split('?')[0]} is unreachable: "
                     f"{str(exc).splitlines()[0]}") from None
    return storage


def _error(message: str):
    from pipeline.cli import CLIError

    return CLIError(message)


# --- db ------------------------------------------------------------------------------------------------------

def cmd_db(args) -> int:
    from backend.store import db

    config = _config(args)
    if args.action == "upgrade":
        db.upgrade(config.database_url, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            raise _error("downgrade needs a target revision (e.g. 'base')")
        try:
            db.downgrade(config.database_url, args.revision)
        except RuntimeError as exc:  # a migration that refuses to drop data says why
            raise _error(f"downgrade refused: {exc}") from None
    print(f"database at revision {db.current_revision(config.database_url) or 'base'}")
    return 0


# --- users ---------------------------------------------------------------------------------------------------

def create_user(session, username: str, password: str, role: str):
    from sqlalchemy import select

    from backend.web.auth import hash_password
    from backend.store.models import Role, User

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

def ingest(session, storage, **options):
    """Add images to a project (made on first use with the channels of its first image): one image per file,
    or all files together as one image's channels with ``per_channel``. Returns (project, new image rows).
    All or nothing: a failure before the rows commit takes back every object this ingest stored."""
    from backend.store.storage import WriteLog

    writes = WriteLog(storage)
    try:
        project, rows = _add_images(session, writes, **options)
        session.commit()
    except BaseException:
        session.rollback()
        writes.take_back()
        raise
    return project, rows


def _add_images(session, storage, *, paths, channels=None, project_name, image_name=None, per_channel=False,
                pixel_size=None, tissue=None, platform=None, model_channels=None, max_pixels=None,
                channel_names=None):
    from sqlalchemy import select

    from pipeline.io import read_image

    from backend.store.models import Project
    from backend.store.projects import add_image, create_project

    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    for p in paths:
        if not p.exists():
            raise _error(f"image not found: {p}")
    groups = [paths] if per_channel else [[p] for p in paths]
    if image_name and len(groups) > 1:
        raise _error("--name names one image; leave it out when ingesting several")
    project = session.scalar(select(Project).where(Project.name == project_name))
    wanted = channels if channels is not None else (project.channel_names if project is not None else None)
    rows = []
    units = []  # (files, index in a stack, image name, tags)
    for group in groups:
        stack = _npz_stack(group[0]) if len(group) == 1 else None
        if stack is None:
            units.append((group, None, image_name or _image_stem(group[0]), {}))
        else:  # TissueNet's layout: one .npz holding N images, with their tissue and platform lists
            units.extend((group, i, f"{_image_stem(group[0])}-{i}", tags) for i, tags in enumerate(stack))
    for group, index, name, tags in units:
        try:
            source = group if len(group) > 1 else group[0]
            if channel_names is not None:
                _check_unnamed(source, channel_names, max_pixels, index)
            pixels, names = read_image(source, wanted, max_pixels=max_pixels, index=index,
                                       channel_names=channel_names)
        except ValueError as exc:
            hint = "" if channels is not None or project is None else (
                f" (project {project.name!r} has channels {', '.join(project.channel_names)}; "
                "map this file's channels with --channels)")
            raise _error(f"{exc}{hint}") from None
        if project is None:
            project = create_project(session, name=project_name, channel_names=names, model_channels=model_channels)
        elif len(names) != len(project.channel_names):
            raise _error(f"{group[0]}: {len(names)} channels, project {project.name!r} has "
                         f"{len(project.channel_names)} ({', '.join(project.channel_names)})")
        rows.append(add_image(session, storage, project, pixels, name=name, pixel_size_um=pixel_size,
                              tissue=tissue or tags.get("tissue"), platform=platform or tags.get("platform"),
                              source_path=str(group[0]) + ("" if index is None else f"[{index}]")))
    return project, rows


def _check_unnamed(source, channel_names, max_pixels, index) -> None:
    """--channel-names names the channels of files that carry none (ch0, ch1, ...); a file's own names stay."""
    from pipeline.channels import UNNAMED
    from pipeline.io import read_image

    _, own = read_image(source, max_pixels=max_pixels, index=index)
    named = [n for n in own if not UNNAMED.match(n)]
    if named and not isinstance(source, (list, tuple)):
        raise _error(f"{source} already names its channels ({', '.join(own)}); pick or reorder them with "
                     f"--channels instead of --channel-names")


def model_input_line(project) -> str:
    """Which channels feed the model, and why: said at ingest so a wrong guess is seen before any prelabel."""
    from backend.store.projects import model_channel_indices
    from pipeline.channels import choose_model_channels

    names = list(project.channel_names)
    if project.model_channels:
        return f"model input: nuclear {project.model_channels[0]!r}, membrane {project.model_channels[-1]!r} (set)"
    idx = model_channel_indices(project)
    choice = choose_model_channels(names)
    return (f"model input: {choice.describe(names)} -> channels {idx} "
            f"(chosen by name; set them with --model-channels NUCLEAR,MEMBRANE)")


def _npz_stack(path: Path) -> list[dict] | None:
    """Per-image tags of an .npz whose X is a stack (N, H, W, C) of images; None for any other file."""
    import zipfile

    import numpy as np

    if path.suffix.lower() != ".npz":
        return None
    try:
        with zipfile.ZipFile(path) as archive, archive.open("X.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(member)[0]
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None  # not this layout: the reader gives the precise error
    if len(shape) != 4:
        return None
    tags = [{} for _ in range(shape[0])]
    with np.load(path, allow_pickle=False) as npz:
        for key, tag in (("tissue_list", "tissue"), ("platform_list", "platform")):
            if key in npz.files and npz[key].shape == (shape[0],):
                for t, value in zip(tags, npz[key].tolist()):
                    t[tag] = str(value)
    return tags


def _image_stem(path: Path) -> str:
    return path.name.split(".")[0]


def publish_crops(session, storage, config, project, images, *, crop_size=270, overlap=30, prelabel="none",
                  batch_name=None):
    """Cut images into a new batch of tasks prelabelled on the whole image first (crops then see no edge
    artefacts); the `cellloop ingest --crop` and `demo` shortcut for batch create + prelabel."""
    from backend import loop

    batch_name = batch_name or f"batch-{len(project.batches) + 1}"
    batch, made = loop.create_batch(session, storage, project, batch_name, images=images, size=crop_size,
                                    overlap=overlap)
    loop.prelabel_batch(session, storage, config, batch, prelabel)
    print(f"cropped {made} tasks into batch {batch.name!r}", file=sys.stderr)
    return list(batch.tasks)


def project_tasks(session, project_name: str | None = None):
    from sqlalchemy import select

    from backend.store.models import Batch, Project, Task

    query = select(Task).join(Batch).join(Project).order_by(Task.id)
    if project_name:
        query = query.where(Project.name == project_name)
    return session.scalars(query).all()


def print_links(config, tasks, out=None) -> None:
    """Task links as CSV (the format crowd platforms import)."""
    from backend.tasks.links import sign_task_token

    out = out or sys.stdout
    print("task_id,y0,x0,y1,x1,url", file=out)
    for t in tasks:
        token = sign_task_token(config.secret_key, t.id, t.token_nonce)
        print(f"{t.id},{t.y0},{t.x0},{t.y1},{t.x1},{config.base_url}/task/{token}", file=out)


def cmd_ingest(args) -> int:
    config = _config(args)
    session = _session(config)
    project_name = args.project or args.name or _image_stem(Path(args.image[0]))
    channels = args.channels.split(",") if args.channels else None
    model_channels = args.model_channels.split(",") if args.model_channels else None
    channel_names = [n.strip() for n in args.channel_names.split(",")] if args.channel_names else None
    if channel_names is not None and (not all(channel_names) or len(set(channel_names)) != len(channel_names)):
        raise _error(f"--channel-names must be distinct and non-empty, got {args.channel_names!r}")
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise _error("--pixel-size must be positive")
    storage = _storage(config)
    project, images = ingest(session, storage, paths=args.image, channels=channels, project_name=project_name,
                             image_name=args.name, per_channel=args.per_channel, pixel_size=args.pixel_size,
                             tissue=args.tissue, platform=args.platform, model_channels=model_channels,
                             max_pixels=config.max_image_pixels, channel_names=channel_names)
    tasks = []
    if args.crop:
        tasks = publish_crops(session, storage, config, project, images, crop_size=args.crop, overlap=args.overlap,
                              prelabel=args.prelabel)
    for image in images:
        print(f"project {project.name!r} (id {project.id}): image {image.name!r} {image.height}x{image.width}, "
              f"channels {', '.join(project.channel_names)}")
    print(model_input_line(project))
    print(f"{len(images)} images added, {len(project.images)} in the project; {len(tasks)} tasks")
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


def cmd_settings(args) -> int:
    """`cellloop settings` shows the instance's settings; `cellloop settings base-url URL` keeps one."""
    config = _config(args)
    if args.key:
        if args.value is None:
            raise _error(f"give the value: cellloop settings {args.key} VALUE")
        write_setting(config.instance_dir, "base_url", _check_base_url(args.value))
        print(f"base URL {args.value.rstrip('/')} kept in {config.instance_dir / SETTINGS_FILE} "
              f"(printed links use it; $CELLLOOP_BASE_URL still wins when set)")
        return 0
    saved = read_settings(config.instance_dir)
    print(f"instance {config.instance_dir} ({config.extra.get('instance_source')})")
    print(f"database {_shown_url(config.database_url)}")
    print(f"storage {config.storage_url.split('?')[0]}")
    source = ("$CELLLOOP_BASE_URL" if os.environ.get("CELLLOOP_BASE_URL") else
              "settings" if "base_url" in saved else "default: set it with `cellloop settings base-url URL`")
    print(f"base URL {config.base_url} ({source})")
    return 0


# --- serve / demo -------------------------------------------------------------------------------------------

def gunicorn_argv(*, host: str, port: int, workers: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The server as `cellloop serve` runs it: each worker process serves several requests at once in threads
    (`CELLLOOP_THREADS`), so fewer processes share more of their cache of current labels; the access log masks
    task tokens."""
    threads = os.environ.get("CELLLOOP_THREADS", "4")
    if not threads.isdigit() or int(threads) < 1:
        raise _error(f"CELLLOOP_THREADS must be a positive integer, got {threads!r}")
    # An annotator strokes every second or two: gunicorn's default keep-alive (2 s) would close the browser's
    # connection between strokes, so each would pay a new connection and could land on another worker (which then
    # catches up on the task instead of editing the labels it holds).
    keepalive = os.environ.get("CELLLOOP_KEEPALIVE_S", "5")
    if not keepalive.isdigit() or int(keepalive) < 1:
        raise _error(f"CELLLOOP_KEEPALIVE_S must be a positive integer, got {keepalive!r}")
    return [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "gthread",
            "--threads", threads, "--keep-alive", keepalive, "--bind", f"{host}:{port}", "--access-logfile", "-",
            "--logger-class", "backend.web.log_masking.TokenMaskingGunicornLogger", *extra, "backend.web.app:create_app()"]


def serve(config, *, host: str, port: int, workers: int) -> int:
    os.environ["CELLLOOP_INSTANCE_DIR"] = str(config.instance_dir)
    os.environ["CELLLOOP_DATABASE_URL"] = config.database_url
    os.environ["CELLLOOP_STORAGE_URL"] = config.storage_url
    saved = read_settings(config.instance_dir).get("base_url")
    os.environ.setdefault("CELLLOOP_BASE_URL", saved or f"http://{host}:{port}")
    argv = gunicorn_argv(host=host, port=port, workers=workers)
    print(f"CellLoop serving on http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_serve(args) -> int:
    config = _config(args)
    from backend.store import db

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

    from backend.store import db
    from backend.store.models import Project, User

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
        from backend.store.projects import project_from_image

        project = project_from_image(session, storage, name="demo", image=image, channel_names=names, pixel_size_um=0.5,
                                 source_path=what)
        session.commit()
        tasks = publish_crops(session, storage, config, project, list(project.images), crop_size=270, overlap=30,
                              prelabel=args.prelabel)
        session.commit()
        print(f"demo project from {what}: {image.shape[0]}x{image.shape[1]}, {len(tasks)} tasks")
    tasks = project_tasks(session, "demo")
    print("annotator links (CSV for a crowd platform):")
    print_links(config, tasks)
    print(f"reviewers log in at {config.base_url}/ ; open an annotator link above to annotate")
    if args.no_serve:
        return 0
    return serve(config, host=args.host, port=args.port, workers=args.workers)


def with_instance(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``p`` with the --instance option every command that opens an instance takes."""
    p.add_argument("--instance", help="instance folder holding the SQLite file and local storage "
                   "(default: $CELLLOOP_INSTANCE_DIR or ./cellloop-data)")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    common = with_instance
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

    p = common(sub.add_parser("ingest", help="add images to a project (made on first use; optionally cut into tasks)"))
    p.add_argument("image", nargs="+", help="image files (TIFF/OME-TIFF/NPZ/PNG), one per image; with "
                   "--per-channel, one file per channel of a single image")
    p.add_argument("--project", help="project name (default: --name or the first file's name)")
    p.add_argument("--per-channel", action="store_true", help="the files are the channels of one image")
    p.add_argument("--channels", help="comma-separated channel names or indices to keep, in order "
                   "(default: all for a new project, the project's channels by name for later images)")
    p.add_argument("--channel-names", help="comma-separated names for the channels of files that have none "
                   "(a plain TIFF's ch0, ch1, ...), e.g. DAPI,CD45; --channels then picks by these names")
    p.add_argument("--model-channels", help="the channels that feed the model, in its order (default: chosen by "
                   "name, a nuclear stain such as DAPI, DNA1, Ir191 or Histone H3, then a membrane marker), "
                   "e.g. DAPI,CD45")
    p.add_argument("--name", help="image name (default: file name)")
    p.add_argument("--pixel-size", type=float, help="microns per pixel")
    p.add_argument("--tissue", help="tissue tag, kept in dataset metadata")
    p.add_argument("--platform", help="imaging platform tag, kept in dataset metadata")
    p.add_argument("--crop", type=int, default=0, metavar="PX", help="also cut into PX-sized tasks (e.g. 270)")
    p.add_argument("--overlap", type=int, default=30, metavar="PX")
    p.add_argument("--prelabel", default="none", help="with --crop: current, baseline, none or a model version")
    p.set_defaults(func=cmd_ingest)

    p = common(sub.add_parser("settings", help="show the instance in use and its settings, or keep one "
                              "(base-url URL: the public URL printed in task links)"))
    p.add_argument("key", nargs="?", choices=["base-url"])
    p.add_argument("value", nargs="?")
    p.set_defaults(func=cmd_settings)

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
    p.add_argument("--prelabel", default="current", help="current (the starter model when shipped, else the "
                   "baseline), baseline, none")
    p.add_argument("--password", help="password for the demo reviewer/admin (default: random, printed)")
    p.add_argument("--no-serve", action="store_true", help="set up and print links, but do not serve")
    p.set_defaults(func=cmd_demo)
