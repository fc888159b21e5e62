"""`cellloop predict | train | evaluate`: the model's subcommands.

Kept free of TensorFlow/Keras imports at module level so `cellloop --help` stays fast; each command
imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _error(message: str):
    from pipeline.cli import CLIError

    return CLIError(message)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="segment an image with a model version (whole-cell and nuclear)")
    p.add_argument("image", nargs="+", help="image file (TIFF/OME-TIFF/NPZ/PNG), or one file per channel")
    p.add_argument("--model", help="model version folder or .keras file (default: the shipped starter model)")
    p.add_argument("--nuclear", help="nuclear channel: name or index")
    p.add_argument("--membrane", help="membrane/cytoplasm channel: name or index (leave out for nuclear-only "
                   "images: whole cells then come from the nuclear channel alone)")
    p.add_argument("--channels", help="comma-separated channels in the model's order (for models not of 2 channels)")
    p.add_argument("--image-mpp", default="auto",
                   help="µm per pixel of the image, or 'auto' (default): estimated from the image's cells")
    p.add_argument("--compartment", choices=("both", "whole-cell", "nuclear"), default="both")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="labels file: .tif/.ome.tif (OME-TIFF) or .npz; for a slide "
                   ".zarr (OME-Zarr) or .ome.tif (tiled OME-TIFF)")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino", "keras"), default=None,
                   help="inference runtime (default: $CELLLOOP_INFERENCE_RUNTIME, else openvino; for onnxruntime and "
                        "openvino the ONNX export is made once and cached beside the model version)")
    p.add_argument("--slide", action="store_true",
                   help="read the image lazily and predict it in blocks joined at the seams (automatic for OME-Zarr, "
                        f"for .zarr output and for TIFFs over {SLIDE_PIXELS // 1_000_000} MP)")
    p.add_argument("--block", type=int, default=None, help="slide block size in px, a multiple of 192 (default 2304)")
    p.add_argument("--scheduler", help="Dask scheduler address: predict the slide's blocks on that cluster "
                   "(its workers must reach the slide, the model and the output folder)")
    p.add_argument("--workers", type=int, default=1, help="slide blocks in parallel on a local Dask cluster")
    p.set_defaults(func=cmd_predict)

    t = subparsers.add_parser("train", help="train a model version, or fine-tune one with --from")
    t.add_argument("--data", required=True, help="training .npz with X (N,H,W,C) and y (N,H,W,2)")
    t.add_argument("--val", help="validation .npz (default: split off --val-split of --data)")
    t.add_argument("--val-split", type=float, default=0.1)
    t.add_argument("--out", required=True, help="new model version folder")
    t.add_argument("--backbone", default=None, help="resnet50 (default), mobilenetv2 or efficientnetv2b0")
    t.add_argument("--heads", choices=("mesmer", "fast"), default=None,
                   help="semantic heads: mesmer (full resolution; default with resnet50) or fast (default otherwise)")
    t.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="keep the default deep-watershed parameters instead of fitting them on the validation data")
    t.add_argument("--from", dest="from_version", help="model version to continue training (fine-tune)")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--steps-per-epoch", type=int, default=None)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop-size", type=int, default=256)
    t.add_argument("--nuclear-weight", type=float, default=None,
                   help="weight of the nuclear heads (default: 1, or 0 when the data has no nuclear labels)")
    t.add_argument("--mpp", type=float, default=None, help="µm per pixel of the training images (default 0.5)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser("evaluate", help="object-level accuracy of a model (or saved labels) on a dataset")
    e.add_argument("--data", required=True, help="test .npz with X and ground truth y")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model version to predict with")
    src.add_argument("--pred", help="saved predictions (.npz with y, or labels file) to score instead")
    e.add_argument("--image-mpp", type=float, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--json", dest="json_out", help="write the metrics as JSON here")
    e.set_defaults(func=cmd_evaluate)


SLIDE_PIXELS = 64_000_000


def _is_slide(args) -> bool:
    from pipeline.slide import is_slide_path

    if args.slide or args.scheduler or args.workers > 1 or Path(args.out).suffix.lower() == ".zarr":
        return True
    if len(args.image) != 1:
        return False
    source = Path(args.image[0])
    if source.suffix.lower() == ".zarr" or (source.is_dir() and is_slide_path(source)):
        return True
    if source.suffix.lower() not in (".tif", ".tiff") or not source.is_file():
        return False
    from pipeline.slide import open_slide

    # tiled or in strips: tifffile's zarr store reads either region by region
    try:
        with open_slide(source) as slide:
            return slide.height * slide.width > SLIDE_PIXELS
    except ValueError:
        return False  # the whole-image reader gives its own, more specific message


def _predict_slide(args, version, model_path, image_mpp) -> int:
    from pipeline.model import slide_predict
    from pipeline.slide import open_slide

    out = Path(args.out)
    if len(args.image) != 1:
        raise _error("a slide is one file (OME-TIFF, tiled TIFF or OME-Zarr), not one file per channel")
    if out.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        raise _error(f"slide labels go to a .zarr folder or an .ome.tif file, not {out.name}")
    if args.workers < 1:
        raise _error("--workers must be at least 1")
    block = args.block or slide_predict.BLOCK
    if block < slide_predict.HALO_AFTER or block % 192:
        raise _error(f"--block must be a multiple of 192 px, at least 384, got {block}")
    wanted = _channel_request(args, len(version.channels), version.channels)
    nuclear_only = len(wanted) == 2 and wanted[1] is None
    with open_slide(args.image[0]) as slide:
        channels = [slide.channel_index(c) for c in (wanted[:1] if nuclear_only else wanted)]
        names = [slide.channel_names[c] for c in channels]
        print(f"{args.image[0]}: slide {slide.height}x{slide.width}, {slide.n_channels} channels, "
              f"levels {slide.levels}; channels {', '.join(names)}")
        if image_mpp == "auto" and slide.pixel_size_um:
            image_mpp = float(slide.pixel_size_um)  # the file's own pixel size beats an estimate
    out.parent.mkdir(parents=True, exist_ok=True)
    result = slide_predict.predict_slide(
        args.image[0], out, model=model_path, channels=channels, image_mpp=image_mpp,
        compartment=args.compartment, runtime=args.runtime, block=block, batch_size=args.batch_size,
        scheduler=args.scheduler, workers=args.workers, nuclear_only=nuclear_only,
        progress=_progress_bar("blocks"))
    t = result.timings
    print(f"{out}: {result.cells} cells, {result.nuclei} nuclei in {result.blocks} blocks "
          f"({result.contradictions} seam contradictions left apart; pre {t['preprocess_s']:.1f}s, "
          f"network {t['network_s']:.1f}s, post {t['postprocess_s']:.1f}s, join {t['join_s']:.1f}s, "
          f"write {t['write_s']:.1f}s)")
    return 0


def _image_mpp(text: str):
    """'auto' or a positive number of µm per pixel, from the --image-mpp flag."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise _error(f"--image-mpp must be 'auto' or a positive number of µm per pixel, got {text!r}")
    return value


def _model_path(requested):
    """The model the user named, or the shipped starter model when none was named."""
    if requested:
        return requested
    from pipeline.model.starter import starter_model_dir

    found = starter_model_dir()
    if found is None:
        raise _error("no --model given and this installation has no starter model; name a model version")
    return found


def _progress_bar(desc: str):
    from tqdm import tqdm

    state = {"bar": None}

    def update(done, total):
        if state["bar"] is None:
            # disable=None hides the bar when stderr is not a terminal (logs, CI).
            state["bar"] = tqdm(total=total, desc=desc, unit="tile", disable=None if total > 1 else True)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _channel_request(args, n_model_channels: int, model_channels: list[str]):
    if args.channels:
        if args.nuclear or args.membrane:
            raise _error("give --channels or --nuclear/--membrane, not both")
        wanted = [c.strip() for c in args.channels.split(",") if c.strip()]
    elif n_model_channels == 2:
        if args.nuclear is None and args.membrane is None:
            raise _error("name the --nuclear channel (and --membrane, if the image has one) by name or index")
        if args.nuclear is None:
            raise _error("--membrane needs --nuclear too (the model always takes a nuclear channel)")
        # nuclear only: the membrane input stays blank, as the published application allows
        wanted = [args.nuclear, args.membrane]
    else:
        raise _error(
            f"the model takes {n_model_channels} channels ({', '.join(model_channels)}); list them with --channels"
        )
    if len(wanted) != n_model_channels:
        raise _error(f"the model takes {n_model_channels} channels, {len(wanted)} given")
    return wanted


def _check_labels_suffix(out: Path):
    name = out.name.lower()
    if not (name.endswith(".tif") or name.endswith(".tiff") or name.endswith(".npz")):
        raise _error(f"--out must end in .tif, .tiff, .ome.tif or .npz, got {out.name}")


def cmd_predict(args) -> int:
    from pipeline import io

    out = Path(args.out)
    if out.suffix.lower() != ".zarr":  # a .zarr folder is a slide's output
        _check_labels_suffix(out)
    image_mpp = _image_mpp(args.image_mpp)
    if args.batch_size < 1:
        raise _error("--batch-size must be at least 1")
    paths = args.image[0] if len(args.image) == 1 else list(args.image)
    for p in args.image:
        if not Path(p).exists():
            raise _error(f"image not found: {p}")

    from pipeline.model import saving
    from pipeline.model.predict import Mesmer

    model_path = _model_path(args.model)
    version = saving.load_model_version(model_path)
    if _is_slide(args):
        return _predict_slide(args, version, model_path, image_mpp)
    wanted = _channel_request(args, len(version.channels), version.channels)
    nuclear_only = len(wanted) == 2 and wanted[1] is None
    image, picked = io.read_image(paths, channels=wanted[:1] if nuclear_only else wanted)
    from pipeline.channels import check_segmentable

    check_segmentable(image.shape, f"the image ({args.image[0]})")
    if nuclear_only:
        import numpy as np

        image = np.concatenate([image, np.zeros_like(image)], axis=-1)
        print(f"no membrane channel: whole cells from nuclear channel {picked[0]!r} only")
    app = Mesmer(version, runtime=args.runtime)
    labels = app.predict(
        image.astype("float32"),
        image_mpp=image_mpp,
        compartment=args.compartment,
        batch_size=args.batch_size,
        progress=_progress_bar("predict"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # the pixel size goes with the labels: the one given, or the one estimated (marked so)
    estimated = image_mpp == "auto"
    mpp = app.scale_estimates[0].image_mpp if estimated and app.scale_estimates else (
        None if estimated else float(image_mpp))
    io.write_labels(out, labels, pixel_size_um=mpp, pixel_size_estimated=estimated)
    n_cells = int(len(set(labels[..., 0].ravel().tolist()) - {0}))
    n_nuc = int(len(set(labels[..., 1].ravel().tolist()) - {0}))
    if n_cells == 0 and n_nuc == 0:
        print(f"warning: no cells found in {out.name}; check the channels ({', '.join(picked)}) and the pixel size")
    t = app.timings
    for estimate in app.scale_estimates:
        print(f"scale: {estimate.describe()}")
    print(
        f"{out}: {n_cells} cells, {n_nuc} nuclei from channels {', '.join(picked)} "
        f"(scale {t.get('scale_s', 0.0):.1f}s, pre {t['preprocess_s']:.1f}s, network {t['network_s']:.1f}s, "
        f"post {t['postprocess_s']:.1f}s)"
    )
    return 0


def cmd_train(args) -> int:
    from pipeline.model import panoptic

    if args.epochs < 1:
        raise _error("--epochs must be at least 1")
    if args.batch_size < 1:
        raise _error("--batch-size must be at least 1")
    if not args.lr > 0:
        raise _error("--lr must be positive")
    if not 0 <= args.val_split < 1:
        raise _error("--val-split must be in [0, 1)")
    if args.backbone is not None and args.backbone not in panoptic.BACKBONES:
        raise _error(f"unknown backbone {args.backbone!r}; choose one of {', '.join(panoptic.BACKBONES)}")
    if args.from_version and (args.backbone or args.heads):
        raise _error("--backbone and --heads come from the --from model version; give one or the other")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise _error(f"{out} already exists and is not empty; choose a new folder")
    for p in (args.data, args.val, args.from_version):
        if p is not None and not Path(p).exists():
            raise _error(f"not found: {p}")

    from pipeline.model import train

    result = train.train(
        data=args.data,
        val=args.val,
        val_split=args.val_split,
        backbone=args.backbone or "resnet50",
        heads=args.heads,
        calibrate=args.calibrate,
        from_version=args.from_version,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        crop_size=args.crop_size,
        nuclear_weight=args.nuclear_weight,
        mpp=args.mpp,
        seed=args.seed,
        out=out,
        verbose="auto",
    )
    tr = result.config["training"]
    print(f"{result.path}: best {tr['monitor']} {tr['best_loss']:.4f} at epoch {tr['best_epoch'] + 1}/{tr['epochs']}")
    for layer, found in (tr.get("postprocess_calibration") or {}).items():
        if isinstance(found, dict):
            print(f"  {layer}: F1 {found['f1']:.3f} with fitted post-processing, {found['default_f1']:.3f} with defaults "
                  f"({tr['postprocess_calibration']['on']} data)")
    return 0


def _load_predictions(path, n_expected, shape_hw):
    import numpy as np

    from pipeline import io

    path = Path(path)
    if not path.exists():
        raise _error(f"not found: {path}")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = "y" if "y" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise _error(f"{path}: expected an array named y")
            pred = z[key]
    else:
        pred = io.read_labels(path)
    if pred.ndim == 3 and n_expected == 1:
        pred = pred[None]
    if pred.ndim == 3 and pred.shape[-1] != 2:
        pred = pred[..., None]
    if pred.ndim != 4 or pred.shape[0] != n_expected or pred.shape[1:3] != tuple(shape_hw):
        raise _error(f"{path}: predictions of shape {pred.shape} do not match {n_expected} images of {tuple(shape_hw)}")
    return pred


def cmd_evaluate(args) -> int:
    import numpy as np

    from pipeline import io, metrics

    data = io.load_dataset(args.data)
    X, y = data["X"], data["y"]
    if args.pred:
        pred = _load_predictions(args.pred, len(X), X.shape[1:3])
        source = {"pred": str(args.pred)}
    else:
        from pipeline.model import saving
        from pipeline.model.predict import Mesmer

        version = saving.load_model_version(args.model)
        if X.shape[-1] != len(version.channels):
            raise _error(f"the data has {X.shape[-1]} channels, the model takes {len(version.channels)}")
        app = Mesmer(version)
        pred = np.stack([app.predict(x, image_mpp=args.image_mpp, batch_size=args.batch_size) for x in X])
        source = {"model": str(args.model)}

    report = {"data": str(args.data), **source, "n_images": int(len(X))}
    layers = [("whole-cell", 0)]
    if y[..., 1].any() and pred.shape[-1] > 1:
        layers.append(("nuclear", 1))
    for name, layer in layers:
        result = metrics.evaluate(y, pred, layer=layer)
        report[name] = result
        print(f"{name}:")
        print(metrics.format_table(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    return 0


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `cellloop` command")
