"""`cellloop batch | prelabel | publish | status | stitch | dataset | models | cycle | report`, and the
`--project` forms of `cellloop train` / `evaluate` that work on the model registry. Arguments and printing only;
the steps themselves are in `backend.loop`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.cli import CLIError


def _open(args):
    from backend.cli.admin_commands import _config, _session, _storage

    config = _config(args)
    return config, _session(config), _storage(config)


def _project(session, name):
    from backend.store.projects import get_project

    try:
        return get_project(session, name)
    except LookupError as exc:
        raise CLIError(str(exc)) from None


def _batch(session, args):
    from backend import loop

    project = _project(session, args.project) if getattr(args, "project", None) else None
    return loop.get_batch(session, project, args.batch)


def _json_or_table(args, rows: list[dict]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[("-" if r.get(c) is None else f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r[c]))
              for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


# --- commands ------------------------------------------------------------------------------------------------

def cmd_batch_create(args) -> int:
    from sqlalchemy import select

    from backend import loop
    from backend.store.models import Image

    config, session, storage = _open(args)
    project = _project(session, args.project)
    images = None
    if args.images:
        names = [n.strip() for n in args.images.split(",") if n.strip()]
        found = {i.name: i for i in session.scalars(select(Image).where(Image.project_id == project.id,
                                                                        Image.name.in_(names)))}
        missing = [n for n in names if n not in found]
        if missing:
            raise CLIError(f"project {project.name!r} has no image named {', '.join(map(repr, missing))}")
        images = [found[n] for n in names]
    batch, made = loop.create_batch(session, storage, project, args.name, images=images, all_new=args.all_new,
                                    size=args.size, overlap=args.overlap)
    total = len(batch.tasks)
    print(f"batch {batch.name!r}: {len(loop.batch_images(session, batch))} images, {total} crops of {args.size} px "
          f"(overlap {args.overlap}); {made} made now")
    return 0


def cmd_prelabel(args) -> int:
    from backend import loop

    if args.workers < 1:
        raise CLIError("--workers must be at least 1")
    config, session, storage = _open(args)
    batch = _batch(session, args)
    result = loop.prelabel_batch(session, storage, config, batch, args.model, scheduler=args.scheduler,
                                 workers=args.workers, force=args.force)
    print(f"batch {batch.name!r} prelabelled with {result['model']}: {result['images']} images segmented, "
          f"{result['crops']} crops written, {result['left_alone']} crops already in people's hands left alone")
    if result["touched"]:
        print("left alone (opened or edited): tasks " + ", ".join(str(t) for t in result["touched"]))
    return 0


def cmd_publish(args) -> int:
    from backend import loop

    config, session, storage = _open(args)
    batch = _batch(session, args)
    if args.base_url:
        from backend.cli.admin_commands import _check_base_url, read_settings, write_setting

        args.base_url = _check_base_url(args.base_url)
        if read_settings(config.instance_dir).get("base_url") != args.base_url:
            # once given, kept: later commands print links on it without the flag or the variable
            write_setting(config.instance_dir, "base_url", args.base_url)
            print(f"base URL {args.base_url} kept in the instance's settings", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as out:
            n = loop.publish_batch(session, config, batch, out, args.base_url)
        print(f"batch {batch.name!r} published: {n} task links written to {args.out}")
    else:
        loop.publish_batch(session, config, batch, sys.stdout, args.base_url)
    return 0


def cmd_status(args) -> int:
    from sqlalchemy import select

    from backend import loop
    from backend.store.models import Batch

    config, session, storage = _open(args)
    if args.batch:
        batches = [_batch(session, args)]
    else:
        query = select(Batch).order_by(Batch.id)
        if args.project:
            query = query.where(Batch.project_id == _project(session, args.project).id)
        batches = list(session.scalars(query))
    rows = [loop.batch_status(session, storage, b) for b in batches]
    if not args.json:
        for r in rows:
            r["states"] = " ".join(f"{k}:{v}" for k, v in r["states"].items())
    _json_or_table(args, rows)
    return 0


def cmd_stitch(args) -> int:
    from backend import loop

    config, session, storage = _open(args)
    batch = _batch(session, args)
    summary = loop.stitch_batch(session, storage, batch)
    conflicts = [dict(image=s["image"], **c) for s in summary for c in s.pop("conflict_list", [])]
    if args.conflicts:
        import csv

        with open(args.conflicts, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "kind", "y", "x", "crops", "cells", "pixels", "tasks", "outcome"])
            for c in conflicts:
                writer.writerow([c["image"], c["kind"], c["y"], c["x"], " ".join(map(str, c["crops"])),
                                 " ".join(map(str, c["cells"])), c["pixels"], " ".join(map(str, c.get("tasks", []))),
                                 c.get("outcome", "")])
    for s in summary:
        print(f"{s['image']}: {s['approved']}/{s['crops']} crops approved, {s['cells']} cells stitched, "
              f"{s['conflicts']} conflicts for QC" + (f" ({s['conflicts_key']})" if s.get("conflicts_key") else "")
              + (f"; image QC task {s['qc_task']} {s['qc']}" if s.get("qc_task") else "")
              + (f", {s['expert_pixels_kept']} px of the expert's QC edits kept" if s.get("expert_pixels_kept") else ""))
    if args.conflicts:
        print(f"{len(conflicts)} conflicts written to {args.conflicts}")
    return 0


def cmd_dataset(args) -> int:
    from backend import loop

    config, session, storage = _open(args)
    project = _project(session, args.project)
    summary = loop.build_dataset(session, storage, project, args.out, tile=args.tile, seed=args.seed, block=args.block,
                                 include_unreviewed=args.include_unreviewed, partial=args.partial_tiles)
    print(f"{summary['path']}: {summary['tiles']} tiles of {args.tile} px from {summary['images']} images, split "
          f"{summary['splits']} (test split frozen), skipped {summary['skipped']}")
    if summary["partial_tiles"]:
        print(f"  {summary['partial_tiles']} tiles reviewed only in part: the rest of each is unknown (the file's "
              f"mask), no loss there")
    if summary["unreviewed_images"]:
        print(f"  {summary['unreviewed_images']} images not QC-approved included (--include-unreviewed; recorded "
              f"in each tile's meta)")
    for split, digest in summary["sha256"].items():
        print(f"  {split}: sha256 {digest or '-'}")
    return 0


def cmd_export(args) -> int:
    from backend.loop import export

    if args.dataset:
        if args.format != "npz":
            raise CLIError("--dataset exports a dataset split in TissueNet's npz layout: use --format npz")
        summary = export.export_dataset_split(args.dataset, args.split, args.out)
        print(f"{summary['images']} tiles of the {args.split} split written to {summary['files'][0]}")
        return 0
    if not args.project:
        raise CLIError("--project: the project to export (or --dataset FILE --split SPLIT for a dataset split)")
    config, session, storage = _open(args)
    project = _project(session, args.project)
    images = [n.strip() for n in args.images.split(",") if n.strip()] if args.images else None
    summary = export.export_project(session, storage, project, args.format, args.out, images=images,
                                    include_unreviewed=args.include_unreviewed)
    what = f"{summary['cells']} cell rows of " if summary["cells"] is not None else ""
    print(f"exported {what}{len(summary['images'])} images of project {project.name!r} as {args.format}:")
    for path in summary["files"]:
        print(f"  {path}")
    if summary["unreviewed"]:
        print(f"  not QC-approved (--include-unreviewed): {', '.join(summary['unreviewed'])}")
    return 0


def _version_row(v, session) -> dict:
    from backend.store.models import ModelVersion

    parent = session.get(ModelVersion, v.parent_id) if v.parent_id else None
    test = [m for k, m in (v.metrics or {}).items() if k.startswith("test:")]
    return {"name": v.name, "parent": parent.name if parent else None, "promoted": bool(v.promoted),
            "backbone": (v.config or {}).get("backbone"), "test_f1": test[-1]["f1"] if test else None,
            "created": v.created_at.strftime("%Y-%m-%d %H:%M")}


def cmd_models(args) -> int:
    from backend.loop import registry

    config, session, storage = _open(args)
    if args.models_action == "list":
        project = _project(session, args.project) if args.project else None
        if project is not None:
            current = registry.current_model(session, storage, project)
            print(f"project {project.name!r}: current model {current.label}")
        _json_or_table(args, [_version_row(v, session) for v in registry.versions(session, project)])
        return 0
    try:
        version = registry.get_version(session, args.version)
    except LookupError as exc:
        raise CLIError(str(exc)) from None
    if args.models_action == "show":
        info = {"name": version.name, "path": version.path, "promoted": version.promoted,
                "lineage": [v.name for v in registry.lineage(session, version)], "config": version.config,
                "metrics": version.metrics, "created_at": version.created_at}
        print(json.dumps(info, indent=1, default=str))
        return 0
    from backend.store.models import Project

    project = session.get(Project, version.project_id) if version.project_id else None
    if project is None:
        raise CLIError(f"{version.name!r} belongs to no project; only a project's own versions are promoted")
    registry.promote(session, project, version)
    print(f"{version.name} is now project {project.name!r}'s current model")
    return 0


def cmd_models_import(args) -> int:
    from backend.loop import registry

    config, session, storage = _open(args)
    project = _project(session, args.project)
    try:
        row = registry.import_version(session, storage, project, args.path,
                                      Path(config.instance_dir) / "model-cache", name=args.name, mpp=args.mpp)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
    if args.promote:
        registry.promote(session, project, row)
    fine_tune = (row.config or {}).get("fine_tune", True)
    print(f"imported {row.name} into project {project.name!r} ({row.config['imported']['format']}, lineage root"
          f"{'' if fine_tune else ', inference only: a SavedModel is not fine-tuned'})"
          + ("; now the project's current model" if args.promote else
             f"; prelabel with --model {row.name} or `cellloop models promote {row.name}`"))
    return 0


def _train_options(args) -> dict:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise CLIError(f"{flag} must be at least 1")
    options = {"epochs": args.epochs or 4, "batch_size": args.batch_size or 8, "seed": args.seed or 0,
               "steps_per_epoch": args.steps_per_epoch, "crop_size": args.crop_size or 256}
    if getattr(args, "backbone", None):
        options["backbone"] = args.backbone
    return options


def _budget_options(args) -> dict:
    """`cycle` trains within a wall-clock budget (default 10 minutes) unless a fixed --epochs is asked for alone."""
    if args.minutes is None and args.epochs is not None:
        return {}
    minutes = 10.0 if args.minutes is None else args.minutes
    if not 0 < minutes <= 24 * 60:
        raise CLIError("--minutes must be more than 0 and at most 1440")
    if args.replay is not None and not 0 <= args.replay < 1:
        raise CLIError("--replay must be at least 0 and below 1")
    if args.patience is not None and args.patience < 1:
        raise CLIError("--patience must be at least 1")
    return {"minutes": minutes, "replay": args.replay, "patience": args.patience, "epochs": args.epochs}


def cmd_cycle(args) -> int:
    from backend import loop

    options = _train_options(args)
    budget = _budget_options(args)
    config, session, storage = _open(args)
    batch = _batch(session, args)
    if budget:
        options.update(budget)
        if args.steps_per_epoch is None:
            options.pop("steps_per_epoch")
    record = loop.run_cycle(session, storage, config, batch, out=args.out, tile=args.tile, block=args.block,
                            include_unreviewed=args.include_unreviewed, partial=args.partial_tiles,
                            min_test_cells=loop.MIN_TEST_CELLS if args.min_test_cells is None else args.min_test_cells,
                            **options)
    print(json.dumps(record, default=str) if args.json else
          f"cycle of batch {batch.name!r} done: {record['candidate']} "
          f"{'promoted' if record['promoted'] else 'not promoted'} ({record['reason']})")
    return 0


def cmd_report(args) -> int:
    from backend import loop

    config, session, storage = _open(args)
    project = _project(session, args.project)
    rows = loop.report(session, project)
    _json_or_table(args, rows)
    if not args.json:
        hint = report_hint(session, project, rows)
        if hint:
            print(hint)
    return 0


def report_hint(session, project, rows) -> str | None:
    """What to run next when the report is still empty (all "-" until a cycle has run)."""
    from sqlalchemy import func, select

    from backend.store.models import Task, TaskState

    if any(r.get("trained") for r in rows):
        return None
    if not rows:
        return (f"no batches yet: cut crops with `cellloop batch create b1 --project {project.name} --all-new`, "
                "then `cellloop prelabel --batch b1` and `cellloop publish --batch b1`")
    approved = session.scalar(select(func.count(Task.id)).join(Task.batch).where(
        Task.state == TaskState.approved, Task.kind == "crop", Task.batch.has(project_id=project.id)))
    first = rows[0]["batch"]
    if not approved:
        return (f"no cycle has run yet, and no crop is approved: see progress with `cellloop status --project "
                f"{project.name}`; once reviewers approve crops, run `cellloop cycle --batch {first}`")
    return (f"no cycle has run yet: {approved} approved crops are waiting; run `cellloop cycle --batch {first}` "
            f"(or step by step: `cellloop stitch --batch {first}`, QC the images in the reviewer queue, "
            f"`cellloop dataset --project {project.name} --out data.npz`, `cellloop train ...`)")


def _registry_train(args) -> int:
    from backend import loop

    config, session, storage = _open(args)
    project = _project(session, args.project)
    if not args.data:
        raise CLIError("--data: the dataset from `cellloop dataset --project ...` to train on")
    row, parent = loop.train_version(session, storage, config, project, args.data, start=args.from_version or "current",
                                     **_train_options(args))
    print(f"registered {row.name} (parent {parent.name if parent else 'none: trained from scratch'})")
    return 0


def _registry_evaluate(args) -> int:
    from backend import loop
    from backend.loop import registry

    config, session, storage = _open(args)
    project = _project(session, args.project)
    try:
        choice = registry.resolve(session, storage, project, args.model or "current")
    except LookupError as exc:
        raise CLIError(str(exc)) from None
    if not args.data:
        raise CLIError("--data: the dataset from `cellloop dataset --project ...` to score on")
    result = loop.evaluate_choice(session, storage, config, project, choice, args.data, split=args.split)
    print(f"{choice.label} on the {args.split} split: F1 {result['f1']:.3f}, precision {result['precision']:.3f}, "
          f"recall {result['recall']:.3f} ({result['n_images']} tiles)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _with_registry(parser, registry_func, required: list[str], one_of: tuple = ()) -> None:
    """Give a model command (`train`, `evaluate`) a `--project` form that works on the registry; without
    --project the command runs as before, so its own required options are checked here instead."""
    parser.add_argument("--project", help="work on this project's model registry (with --data from `cellloop "
                        "dataset`): register the result / score a registered version")
    for action in parser._actions:
        if action.dest in required:
            action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    plain = parser.get_default("func")

    def dispatch(args):
        if args.project:
            return registry_func(args)
        missing = [f"--{d.replace('_', '-')}" for d in required if getattr(args, d, None) is None]
        if one_of and all(getattr(args, d, None) is None for d in one_of):
            missing.append(" or ".join(f"--{d}" for d in one_of))
        if missing:
            raise CLIError(f"the following arguments are required: {', '.join(missing)}")
        return plain(args)

    parser.set_defaults(func=dispatch)


def register(sub) -> None:
    from backend.cli.admin_commands import with_instance as common

    p = sub.add_parser("batch", help="batches of crops to annotate")
    actions = p.add_subparsers(dest="batch_action", required=True)
    c = common(actions.add_parser("create", help="cut images into crops (boxes recorded), one task per crop"))
    c.add_argument("name")
    c.add_argument("--project", required=True)
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--images", help="comma-separated image names")
    which.add_argument("--all-new", action="store_true", help="every image of the project not yet in a batch")
    c.add_argument("--size", type=int, default=270, help="crop size in px (default 270)")
    c.add_argument("--overlap", type=int, default=40, help="overlap of neighbouring crops in px (default 40)")
    c.set_defaults(func=cmd_batch_create)

    p = common(sub.add_parser("prelabel", help="segment each whole image of a batch, then cut labels per crop"))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--model", default="current", help="current (default), a version name, baseline, or none")
    p.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster when --workers > 1)")
    p.add_argument("--workers", type=int, default=1, help="local Dask workers (default 1: in this process)")
    p.add_argument("--force", action="store_true",
                   help="re-prelabel a published batch (crops someone opened or edited are still left alone)")
    p.set_defaults(func=cmd_prelabel)

    p = common(sub.add_parser("publish", help="task links of a batch as CSV for a crowd platform"))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--base-url", help="public URL of the server, kept in the instance's settings once given "
                   "(default: $CELLLOOP_BASE_URL, else the one kept)")
    p.add_argument("--out", help="write the CSV here instead of stdout")
    p.set_defaults(func=cmd_publish)

    p = common(sub.add_parser("status", help="tasks per state, edits and seconds per cell, throughput"))
    p.add_argument("--batch")
    p.add_argument("--project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = common(sub.add_parser("stitch", help="approved crops back into whole-image labels (max overlap)"))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--conflicts", help="also write the conflict list for expert QC as CSV here")
    p.set_defaults(func=cmd_stitch)

    p = common(sub.add_parser("dataset", help="QC'd 256-px tiles of stitched labels, 80/10/10, test frozen"))
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True, help="dataset .npz")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, help="split by spatial blocks of this many px (default 512; an image keeps "
                                             "the block size of its first dataset)")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="also stitched images the expert has not QC-approved (recorded in the dataset's meta)")
    p.add_argument("--partial-tiles", type=float, metavar="SHARE",
                   help="also keep tiles the approved crops cover only in part, when at least this share (0-1] is "
                        "covered; the rest is unknown to training (default: only fully covered tiles)")
    p.set_defaults(func=cmd_dataset)

    p = common(sub.add_parser("export", help="reviewed labels as OME-TIFF per image, TissueNet npz, or per-cell CSV"))
    p.add_argument("--project", help="the project whose QC-approved images to export")
    p.add_argument("--images", help="comma-separated image names (default: every QC-approved image)")
    p.add_argument("--format", required=True, choices=("ome-tiff", "npz", "csv"))
    p.add_argument("--out", required=True, help="folder for the files")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="also stitched images the expert has not QC-approved (their current labels)")
    p.add_argument("--dataset", help="instead of a project: a dataset .npz from `cellloop dataset` (with --split)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="with --dataset (default test)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="the model registry")
    actions = p.add_subparsers(dest="models_action", required=True)
    c = common(actions.add_parser("list", help="versions with lineage and test F1"))
    c.add_argument("--project")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_models)
    for action, text in (("show", "one version's config, metrics and lineage"),
                         ("promote", "make a version its project's current model")):
        c = common(actions.add_parser(action, help=text))
        c.add_argument("version")
        c.set_defaults(func=cmd_models)

    c = common(actions.add_parser("import", help="register a model made elsewhere (.keras, .h5 or a SavedModel "
                                  "folder with Mesmer's signature) as a lineage root of a project"))
    c.add_argument("path", help="a Keras 3 .keras, a Keras 2 .h5 or a TensorFlow SavedModel folder")
    c.add_argument("--project", required=True)
    c.add_argument("--name", help="version name (default: PROJECT-<file name>)")
    c.add_argument("--mpp", type=float, default=0.5, help="the model's pixel size in µm (Mesmer: 0.5)")
    c.add_argument("--promote", action="store_true", help="make it the project's current model at once")
    c.set_defaults(func=cmd_models_import)

    def training(p):
        p.add_argument("--epochs", type=int)
        p.add_argument("--steps-per-epoch", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--crop-size", type=int)
        p.add_argument("--seed", type=int)
        return p

    p = training(common(sub.add_parser("cycle", help="stitch, dataset, train, evaluate, promote: one cycle")))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--out", help="dataset .npz (default: <instance>/datasets/PROJECT/BATCH.npz)")
    p.add_argument("--tile", type=int, default=256, help="dataset tile size in px (default 256)")
    p.add_argument("--block", type=int, help="split by spatial blocks of this many px (default 512)")
    p.add_argument("--backbone", help="backbone when training from scratch (default the light one)")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="train on stitched images the expert has not QC-approved yet (recorded in the dataset)")
    p.add_argument("--partial-tiles", type=float, metavar="SHARE",
                   help="also keep tiles the approved crops cover only in part, when at least this share (0-1] is "
                        "covered; the rest is unknown to training (default: only fully covered tiles)")
    p.add_argument("--minutes", type=float, help="training budget of this cycle in minutes (default 10; with "
                   "--epochs alone training runs that many epochs instead)")
    p.add_argument("--replay", type=float, help="share of each batch drawn from the starter's synthetic tissue "
                   "so the model does not forget (default 0.25; 0: none)")
    p.add_argument("--patience", type=int, help="stop after this many epochs without a better validation loss "
                   "(default 4)")
    p.add_argument("--min-test-cells", type=int,
                   help="promote only when the frozen test split holds at least this many cells (default 100: a "
                        "difference on fewer is mostly noise; below it the admin decides with `models promote`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cycle)

    p = common(sub.add_parser("report", help="per-cycle table: test F1, edits and seconds per cell, cells"))
    p.add_argument("--project", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    train = sub.choices.get("train")
    if train is not None:
        common(train)
        _with_registry(train, _registry_train, ["data", "out"])
    evaluate = sub.choices.get("evaluate")
    if evaluate is not None:
        common(evaluate)
        evaluate.add_argument("--split", default="test", choices=("train", "val", "test"),
                              help="with --project: the dataset split to score on (default the frozen test split)")
        _with_registry(evaluate, _registry_evaluate, ["data"], one_of=("model", "pred"))
