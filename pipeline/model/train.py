"""Training and fine-tuning of the Mesmer PanopticNet (Keras 3, backend-agnostic).

Data: an ``.npz`` with ``X`` (N, H, W, C) and ``y`` (N, H, W, 2) [whole-cell, nuclear], or arrays.
Images are normalised once like at prediction time; crops, zoom, flips and 90° rotations are drawn
per batch, and the four targets are computed on the fly from the augmented labels.

Partial labels: an optional ``mask`` (N, H, W), True where the labels are known (the dataset file's
``mask``, see ``pipeline.dataset.partial_label_mask``). It travels through the same augmentation as the
labels; unknown pixels get an all-zero pixelwise target (so they neither add loss nor count in the
class balance) and sample weight 0 on every head, so they contribute nothing to the gradient.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.model import preprocess, transforms

DEFAULTS = dict(
    lr=1e-4,
    clipnorm=1e-3,
    lr_decay=0.99,
    batch_size=8,
    crop_size=256,
    zoom=(0.7, 1.43),
)


def load_npz(path) -> tuple[np.ndarray, np.ndarray]:
    """X (N,H,W,C) float32 and y (N,H,W,2) int32 from a dataset ``.npz`` (TissueNet's included)."""
    from pipeline import io

    data = io.load_dataset(path)
    return check_dataset(data["X"], data["y"], str(path))


def load_npz_masked(path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """X, y and the known-label mask (None when the file has none) from a dataset ``.npz``."""
    from pipeline import io

    data = io.load_dataset(path)
    X, y = check_dataset(data["X"], data["y"], str(path))
    return X, y, check_mask(data.get("mask"), X, str(path))


def check_mask(mask, X, what: str = "dataset") -> np.ndarray | None:
    """``mask`` as bool (N, H, W) matching images ``X`` (N, H, W, C), or None (every label known)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 2 and X.shape[0] == 1:
        mask = mask[None]
    if mask.shape != X.shape[:3]:
        raise ValueError(f"{what}: mask must be (N, H, W) matching X {X.shape[:3]}, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def check_dataset(X, y, what: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 3:
        X, y = X[None], y[None]
    if X.ndim != 4:
        raise ValueError(f"{what}: X must be (N, H, W, C), got shape {X.shape}")
    if y.ndim != 4 or y.shape[-1] != 2 or y.shape[:3] != X.shape[:3]:
        raise ValueError(f"{what}: y must be (N, H, W, 2) matching X {X.shape[:3]}, got shape {y.shape}")
    if min(X.shape[1:3]) < 32:
        raise ValueError(f"{what}: images must be at least 32 px on each side, got {X.shape[1:3]}")
    return X.astype(np.float32, copy=False), y.astype(np.int32, copy=False)


def _crop_side(h: int, w: int, crop_size: int) -> int:
    side = min(int(crop_size), h, w)
    return max(32, side - side % 32)


def augment_pair(rng, x, y, crop: int, zoom=(0.7, 1.43), mask=None):
    """One random training view of image ``x`` (H,W,C) and labels ``y`` (H,W,2), both crop × crop.

    Zoom is drawn log-uniformly so shrinking and enlarging are equally likely; labels are resized by
    index lookup so ids stay ids. With ``mask`` (H, W) the known-label mask takes the same view and is
    returned third. An enlarged view would widen the mask's band around partially traced cells past the
    one pixel whose targets do not depend on the untraced pixels (``pipeline.dataset.PARTIAL_BAND_PX``), so
    there the mask loses its outer pixel (a 4-connected erosion; the view's edges stay known).
    """
    from scipy import ndimage as ndi

    h, w = x.shape[:2]
    z = math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1]))) if zoom else 1.0
    src = int(round(crop / z))
    src = max(8, min(src, h, w))
    r = int(rng.integers(0, h - src + 1))
    c = int(rng.integers(0, w - src + 1))
    xs, ys = x[r : r + src, c : c + src], y[r : r + src, c : c + src]
    ms = None if mask is None else np.asarray(mask, bool)[r : r + src, c : c + src]
    if src != crop:
        f = crop / src
        xs = ndi.zoom(xs, (f, f, 1), order=1, grid_mode=True, mode="nearest")[:crop, :crop]
        ys = preprocess.resample_labels(ys, (crop, crop))
        if ms is not None:
            ms = preprocess.resample_labels(ms, (crop, crop))
            if f > 1 and not ms.all():
                ms = ndi.binary_erosion(ms, structure=ndi.generate_binary_structure(2, 1), border_value=1)
    k = int(rng.integers(0, 4))
    flip = rng.random() < 0.5
    xs, ys = np.rot90(xs, k), np.rot90(ys, k)
    if flip:
        xs, ys = xs[:, ::-1], ys[:, ::-1]
    out = (np.ascontiguousarray(xs, np.float32), np.ascontiguousarray(ys, np.int32))
    if ms is None:
        return out
    ms = np.rot90(ms, k)
    return out + (np.ascontiguousarray(ms[:, ::-1] if flip else ms),)


def _make_dataset_class():
    import keras

    class MesmerDataset(keras.utils.PyDataset):
        """Batches (x, [4 targets]) from normalised images; random views when ``augment``."""

        def __init__(self, X, y, batch_size, crop_size, augment, seed, steps=None, zoom=DEFAULTS["zoom"],
                     layer_weights=None, sampling=None, mask=None, **kw):
            super().__init__(**kw)
            self.X, self.y = X, y
            self.mask = None if mask is None else np.asarray(mask, bool)
            self.layer_weights = None if layer_weights is None else np.asarray(layer_weights, np.float32)
            self.sampling = None if sampling is None else np.asarray(sampling, np.float64) / np.sum(sampling)
            self.batch_size = int(batch_size)
            self.augment = augment
            self.seed = int(seed)
            self.zoom = zoom
            self.epoch = 0
            n = len(X)
            if augment:
                self.crop = _crop_side(X.shape[1], X.shape[2], crop_size)
                self.steps = int(steps) if steps else max(1, math.ceil(n / self.batch_size))
            else:
                # Whole images, trimmed to the model stride; deterministic so validation losses compare.
                self.crop = None
                self.steps = max(1, math.ceil(n / self.batch_size))

        def __len__(self):
            return self.steps

        def on_epoch_end(self):
            self.epoch += 1

        def __getitem__(self, idx):
            if self.augment:
                rng = np.random.default_rng([self.seed, self.epoch, int(idx)])
                if self.sampling is None:
                    picks = rng.integers(0, len(self.X), self.batch_size)
                else:
                    picks = rng.choice(len(self.X), self.batch_size, p=self.sampling)
                pairs = [augment_pair(rng, self.X[i], self.y[i], self.crop, self.zoom,
                                      None if self.mask is None else self.mask[i]) for i in picks]
                xb = np.stack([p[0] for p in pairs])
                yb = np.stack([p[1] for p in pairs])
                mb = None if self.mask is None else np.stack([p[2] for p in pairs])
            else:
                sl = slice(idx * self.batch_size, (idx + 1) * self.batch_size)
                h, w = self.X.shape[1:3]
                picks = np.arange(len(self.X))[sl]
                xb = self.X[sl, : h - h % 32, : w - w % 32]
                yb = self.y[sl, : h - h % 32, : w - w % 32]
                mb = None if self.mask is None else self.mask[sl, : h - h % 32, : w - w % 32]
            targets = transforms.make_targets(yb)
            if mb is not None:
                # Unknown pixels: no class in the pixelwise targets (no loss, no share in the class
                # balance) and weight 0 below (no distance loss).
                targets[1][~mb] = 0.0
                targets[3][~mb] = 0.0
            targets = tuple(targets)
            if self.mask is not None:
                known = mb.astype(np.float32)
                lw = (np.ones((len(picks), 2), np.float32) if self.layer_weights is None
                      else self.layer_weights[picks])
                w0, w1 = known * lw[:, 0, None, None], known * lw[:, 1, None, None]
                return xb, targets, (w0, w0, w1, w1)
            if self.layer_weights is None:
                return xb, targets
            # Per-image loss weights [whole-cell, nuclear] for each head: an image annotated in one
            # layer only (nuclei-only data, whole-cell-only data) teaches nothing wrong to the other.
            # Shaped (B, 1, 1) so they broadcast over the per-pixel losses.
            w = self.layer_weights[picks][:, None, None, :]
            return xb, targets, (w[..., 0], w[..., 0], w[..., 1], w[..., 1])

    return MesmerDataset


def make_dataset(X, y, *, batch_size=8, crop_size=256, augment=True, seed=0, steps=None, zoom=DEFAULTS["zoom"],
                 layer_weights=None, sampling=None, mask=None):
    """A ``keras.utils.PyDataset`` over already-normalised X and labels y.

    ``layer_weights`` (N, 2): per-image loss weights of the whole-cell and nuclear heads (batches
    then carry sample weights); ``sampling`` (N,): relative chance of each image being drawn;
    ``mask`` (N, H, W): True where labels are known (batches then carry per-pixel sample weights, 0 on
    unknown pixels, times the layer weights).
    """
    return _make_dataset_class()(X, y, batch_size, crop_size, augment, seed, steps=steps, zoom=zoom,
                                 layer_weights=layer_weights, sampling=sampling, mask=mask)


def _batchnorm_layers(layer) -> list:
    import keras

    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for sub in getattr(layer, "layers", []):
        found.extend(_batchnorm_layers(sub))
    return found


def recalibrate_batchnorm(model, batches) -> int:
    """Set every BatchNormalization's moving statistics to their average over ``batches``.

    Trained from scratch for a few hundred steps, moving averages still carry their initial values
    and lag the weights, so inference-mode outputs collapse even when training-mode outputs are
    good. Momentum i/(i+1) on batch i turns the exponential average into an exact running mean.
    Returns the number of batches used.
    """
    bns = _batchnorm_layers(model)
    saved = [bn.momentum for bn in bns]
    n = 0
    try:
        for x in batches:
            for bn in bns:
                bn.momentum = n / (n + 1.0)
            model(x, training=True)
            n += 1
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return n


def _callbacks(lr: float, lr_decay: float, monitor: str, csv_path: Path | None, calibration=None,
               max_seconds: float | None = None, checkpoint=None, patience: int | None = None,
               warmup_epochs: int = 0):
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        """Recalibrate BN statistics after the last step of each epoch, before validation runs."""

        def __init__(self, dataset, n_batches):
            super().__init__()
            self.dataset, self.n_batches = dataset, n_batches

        def on_train_batch_end(self, batch, logs=None):
            if batch == len(self.dataset) - 1:
                start = (self.dataset.epoch * 7919) % max(1, len(self.dataset))
                idx = [(start + i) % len(self.dataset) for i in range(self.n_batches)]
                recalibrate_batchnorm(self.model, (self.dataset[i][0] for i in idx))

    class KeepBest(keras.callbacks.Callback):
        """Remember the weights of the epoch with the lowest ``monitor`` and restore them at the end."""

        def __init__(self):
            super().__init__()
            self.best = math.inf
            self.best_epoch = None
            self.best_weights = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is not None and value < self.best:
                self.best, self.best_epoch = float(value), epoch
                self.best_weights = self.model.get_weights()
                if checkpoint is not None:
                    checkpoint(self.model, epoch, self.best)

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    class WallClock(keras.callbacks.Callback):
        """Stop after the first epoch that ends past ``max_seconds`` of training."""

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if time.perf_counter() - self.start > max_seconds:
                self.model.stop_training = True

    class EarlyStop(keras.callbacks.Callback):
        """Stop once ``patience`` epochs in a row brought no new best (KeepBest restores the best)."""

        def on_epoch_end(self, epoch, logs=None):
            if keep.best_epoch is not None and epoch - keep.best_epoch >= patience:
                self.model.stop_training = True

    def schedule(epoch, _):
        ramp = min(1.0, (epoch + 1) / (int(warmup_epochs) + 1)) if warmup_epochs else 1.0
        return lr * ramp * lr_decay ** max(0, epoch - int(warmup_epochs))

    keep = KeepBest()
    cbs = [keras.callbacks.LearningRateScheduler(schedule)]
    if max_seconds:
        cbs.append(WallClock())
    if calibration is not None:
        cbs.append(PreciseBatchNorm(*calibration))
    cbs.append(keep)
    if patience:
        cbs.append(EarlyStop())
    if csv_path is not None:
        cbs.append(keras.callbacks.CSVLogger(str(csv_path)))
    return cbs, keep


@dataclass
class TrainResult:
    model: object
    config: dict
    history: list[dict]
    path: Path | None

    @property
    def version(self):
        """The trained model with its config (post-processing included), ready for ``Mesmer``."""
        from pipeline.model import saving

        return saving.ModelVersion(model=self.model, config=self.config, path=self.path)


def train(
    X=None,
    y=None,
    *,
    data=None,
    val=None,
    val_split: float = 0.1,
    backbone: str = "resnet50",
    heads: str | None = None,
    architecture: dict | None = None,
    from_version=None,
    epochs: int = 8,
    steps_per_epoch: int | None = None,
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    clipnorm: float = DEFAULTS["clipnorm"],
    lr_decay: float = DEFAULTS["lr_decay"],
    crop_size: int = DEFAULTS["crop_size"],
    zoom=DEFAULTS["zoom"],
    nuclear_weight: float | None = None,
    channels: list[str] | None = None,
    mpp: float | None = None,
    seed: int = 0,
    out=None,
    overwrite: bool = False,
    verbose="auto",
    log_csv=None,
    bn_batches: int = 8,
    calibrate: bool = True,
    layer_weights=None,
    sampling=None,
    max_seconds: float | None = None,
    checkpoint=None,
    calibration_data=None,
    mask=None,
    patience: int | None = None,
    warmup_epochs: int = 0,
    extra_config: dict | None = None,
) -> TrainResult:
    """Train a new model (``backbone``, ``heads`` and the other ``architecture`` keywords of
    ``panoptic.build_panoptic``) or continue one
    (``from_version``); save it to ``out`` if given.

    ``data``/``val`` are ``.npz`` paths or (X, y) pairs; without ``val``, ``val_split`` of the images
    (at least one) is held out, chosen by ``seed``. ``nuclear_weight=None`` trains the nuclear heads
    only when the labels hold any nucleus (0 otherwise, e.g. whole-cell-only annotations).
    The returned model carries the weights of the epoch with the lowest validation loss.
    ``bn_batches`` training batches re-estimate the batch-norm statistics at the end of every epoch
    (see ``recalibrate_batchnorm``); 0 keeps Keras' moving averages. With ``calibrate`` the
    deep-watershed parameters saved with the model are chosen on the validation images (the training
    images when there are none, or ``calibration_data`` (X, y) when given) by ``calibrate_postprocess``.

    For mixed data: ``layer_weights`` (N, 2) weighs each image's whole-cell and nuclear losses (0 where
    a layer is not annotated) and ``sampling`` (N,) sets how often each image is drawn. ``max_seconds``
    stops training after the first epoch that ends past it; ``checkpoint`` is a folder where every
    new best model is saved as a model version as soon as it is found (default post-processing), so a
    long run that is stopped still leaves a usable model.

    Partial labels: ``mask`` (N, H, W) is True where ``y`` is known (read from ``data``'s ``mask`` when
    ``data`` is a path); ``val`` may be (X, y, mask) likewise. Masked pixels carry no loss. The config's
    ``training.label_mask`` records how many images had one and what share of their pixels was known.

    Fine-tuning: ``patience`` stops after that many epochs without a better validation loss (early
    stopping; the best epoch's weights are kept either way); ``warmup_epochs`` ramps the learning rate up
    linearly over the first epochs so a pretrained model's weights are not shaken by the first large steps
    of a fresh Adam state. ``extra_config`` is merged into the config's ``training`` record.
    """
    import keras

    from pipeline.model import losses, panoptic, postprocess, saving

    data_hashes = []
    if data is not None:
        if X is not None:
            raise ValueError("give either arrays X, y or data, not both")
        if isinstance(data, (str, Path)):
            data_hashes.append({"path": str(data), "sha256": saving.sha256_file(data)})
            X, y, file_mask = load_npz_masked(data)
            mask = file_mask if mask is None else mask
        elif len(data) == 3:
            X, y, mask = data
        else:
            X, y = data
    if X is None or y is None:
        raise ValueError("no training data: pass X and y or data")
    X, y = check_dataset(X, y, "training data")
    mask = check_mask(mask, X, "training data")
    for name, arr, shape in (("layer_weights", layer_weights, (len(X), 2)), ("sampling", sampling, (len(X),))):
        if arr is not None and np.shape(arr) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {np.shape(arr)}")
    if not data_hashes:
        data_hashes.append({"path": None, "sha256": saving.sha256_arrays(X, y) if mask is None
                            else saving.sha256_arrays(X, y, mask)})
    mask_record = _mask_record(mask, len(X))

    mv = None
    if val is not None:
        if isinstance(val, (str, Path)):
            data_hashes.append({"path": str(val), "sha256": saving.sha256_file(val), "role": "validation"})
            Xv, yv, mv = load_npz_masked(val)
        else:
            Xv, yv = check_dataset(*val[:2], "validation data")
            mv = check_mask(val[2] if len(val) == 3 else None, Xv, "validation data")
    elif val_split and val_split > 0:
        if len(X) < 2:
            raise ValueError("need at least 2 images to split off validation data; pass val instead")
        order = np.random.default_rng(seed).permutation(len(X))
        n_val = min(len(X) - 1, max(1, int(round(len(X) * float(val_split)))))
        Xv, yv = X[order[:n_val]], y[order[:n_val]]
        X, y = X[order[n_val:]], y[order[n_val:]]
        if mask is not None:
            mv, mask = mask[order[:n_val]], mask[order[n_val:]]
        layer_weights = None if layer_weights is None else np.asarray(layer_weights)[order[n_val:]]
        sampling = None if sampling is None else np.asarray(sampling)[order[n_val:]]
    else:
        Xv = yv = None

    # Seeded before the model is built so its initial weights, not only the batches, repeat.
    keras.utils.set_random_seed(seed)
    parent = None
    if from_version is not None:
        version = from_version if isinstance(from_version, saving.ModelVersion) else saving.load_model_version(from_version)
        if not saving.can_fine_tune(version.config):
            raise ValueError(f"{version.config.get('name') or from_version} was imported from a TensorFlow SavedModel, "
                             "which runs for inference only: import the .keras or .h5 form to fine-tune it")
        model = version.model
        base_cfg = dict(version.config)
        parent = str(version.path) if version.path is not None else base_cfg.get("name")
        backbone = base_cfg.get("backbone") or backbone
    else:
        heads = heads or panoptic.default_heads(backbone)
        model = panoptic.build_panoptic(X.shape[-1], backbone, heads=heads, **(architecture or {}))
        base_cfg = saving.default_config(X.shape[-1], backbone=backbone, heads=heads)
        if architecture:
            base_cfg["architecture"] = dict(architecture)
    n_channels = int(model.inputs[0].shape[-1])
    if X.shape[-1] != n_channels:
        raise ValueError(f"the model takes {n_channels} channels, the training data has {X.shape[-1]}")
    if Xv is not None and Xv.shape[-1] != n_channels:
        raise ValueError(f"the validation data has {Xv.shape[-1]} channels, the model takes {n_channels}")

    if nuclear_weight is None:
        nuclear_weight = 1.0 if bool(np.any(y[..., 1])) else 0.0
    loss_fns, loss_weights = losses.mesmer_losses(nuclear_weight)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=clipnorm),
        loss=loss_fns,
        loss_weights=loss_weights,
    )

    Xn = preprocess.normalize(X)
    train_ds = make_dataset(Xn, y, batch_size=batch_size, crop_size=crop_size, augment=True, seed=seed,
                            steps=steps_per_epoch, zoom=zoom, layer_weights=layer_weights, sampling=sampling,
                            mask=mask)
    val_ds = None
    if Xv is not None:
        val_ds = make_dataset(preprocess.normalize(Xv), yv, batch_size=batch_size, augment=False, mask=mv)
    monitor = "val_loss" if val_ds is not None else "loss"
    calibration = (train_ds, int(bn_batches)) if bn_batches else None
    save_best = None
    if checkpoint is not None:
        def save_best(model_, epoch, loss):
            cfg = {**base_cfg, "backbone": backbone, "mpp": float(mpp or base_cfg.get("mpp") or saving.DEFAULT_MPP),
                   "channels": channels or base_cfg.get("channels"), "parent": parent,
                   "training": {"checkpoint_epoch": epoch, "checkpoint_loss": loss, "monitor": monitor}}
            saving.save_model_version(model_, checkpoint, cfg, overwrite=True)
    callbacks, keep = _callbacks(lr, lr_decay, monitor, Path(log_csv) if log_csv else None, calibration,
                                 max_seconds=max_seconds, checkpoint=save_best, patience=patience,
                                 warmup_epochs=warmup_epochs)

    t0 = time.perf_counter()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - t0
    history = [
        {"epoch": i, **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.history.get("loss", [])))
    ]

    pp_config = base_cfg.get("postprocess") or {
        "whole_cell_kwargs": dict(postprocess.WHOLE_CELL_DEFAULTS), "nuclear_kwargs": dict(postprocess.NUCLEAR_DEFAULTS)}
    pp_report = None
    if calibrate:
        if calibration_data is not None:
            # Images of any size: a list of (H, W, C) images and (H, W, 2) labels is fine here.
            known = calibration_data[2] if len(calibration_data) == 3 else None
            on, (Xc, yc) = "calibration", calibration_data[:2]
        else:
            on, (Xc, yc), known = (("validation", (Xv, yv), mv) if Xv is not None else ("training", (X, y), mask))
        pp_config, pp_report = calibrate_postprocess(model, Xc, yc, pp_config, nuclear=nuclear_weight > 0,
                                                     known=known)
        pp_report["on"] = on

    config = dict(base_cfg)
    config.update(
        backbone=backbone,
        channels=channels or base_cfg.get("channels") or saving.default_config(n_channels)["channels"],
        mpp=float(mpp or base_cfg.get("mpp") or saving.DEFAULT_MPP),
        postprocess=pp_config,
        parent=parent,
        created=None,
        metrics={},
        training={
            "data": data_hashes,
            "n_train": int(len(X)),
            "n_val": int(0 if Xv is None else len(Xv)),
            "epochs": len(history),
            "steps_per_epoch": len(train_ds),
            "batch_size": int(batch_size),
            "crop_size": int(train_ds.crop),
            "lr": float(lr),
            "clipnorm": float(clipnorm),
            "lr_decay": float(lr_decay),
            "nuclear_weight": float(nuclear_weight),
            "seed": int(seed),
            "bn_batches": int(bn_batches),
            "monitor": monitor,
            "best_epoch": keep.best_epoch,
            "best_loss": None if keep.best_epoch is None else keep.best,
            "seconds": round(seconds, 1),
            "history": history,
            "postprocess_calibration": pp_report,
            "label_mask": mask_record,
            "patience": patience,
            "warmup_epochs": int(warmup_epochs),
            "stopped_early": bool(patience) and len(history) < int(epochs) and keep.best_epoch is not None
            and len(history) - 1 - keep.best_epoch >= int(patience),
            **(extra_config or {}),
        },
    )
    path = None
    if out is not None:
        path = saving.save_model_version(model, out, config, overwrite=overwrite)
        _write_history(path, history)
    return TrainResult(model=model, config=config, history=history, path=path)


def _mask_record(mask, n: int) -> dict:
    """What the config says about partial labels: none, or how many images had unknown pixels."""
    if mask is None:
        return {"images": 0, "of": int(n), "known_fraction": 1.0}
    partial = ~mask.reshape(len(mask), -1).all(axis=1)
    return {"images": int(partial.sum()), "of": int(n),
            "known_fraction": round(float(mask[partial].mean()) if partial.any() else 1.0, 4),
            "rule": "loss only where the dataset's mask is 1 (traced cells and a band around them)"}


def calibrate_postprocess(model, X, y, pp_config: dict, *, nuclear: bool, max_images: int = 16, known=None):
    """Fit the deep-watershed parameters of ``pp_config`` to labelled images; returns (config, report).

    The network runs once per image (at most ``max_images``); each layer's parameters are then
    searched over ``postprocess.CALIBRATION_GRID`` (see ``postprocess.calibrate``). The nuclear layer is
    calibrated only when it was trained (``nuclear``).
    """
    from pipeline.model import postprocess
    from pipeline.model.predict import Mesmer

    app = Mesmer(model)
    outs = [app.predict_outputs(np.asarray(x, np.float32)) for x in X[:max_images]]
    truths = [np.asarray(t) for t in y[:max_images]]
    known = None if known is None else [None if k is None else np.asarray(k, bool) for k in known[:max_images]]
    new = {k: dict(v) for k, v in pp_config.items()}
    report = {"n_images": len(outs)}
    layers = [("whole_cell_kwargs", 0, postprocess.WHOLE_CELL_DEFAULTS)]
    if nuclear:
        layers.append(("nuclear_kwargs", 1, postprocess.NUCLEAR_DEFAULTS))
    for key, k, defaults in layers:
        start = {**defaults, **new.get(key, {})}
        # Images annotated in the other layer only say nothing about this one.
        use = [i for i, t in enumerate(truths) if t[..., k].any()]
        if not use:
            continue
        found = postprocess.calibrate([outs[i][2 * k] for i in use], [outs[i][2 * k + 1] for i in use],
                                      [truths[i][..., k] for i in use], start,
                                      known=None if known is None else [known[i] for i in use])
        new[key] = found["kwargs"]
        report[key] = {"f1": round(found["f1"], 4), "default_f1": round(found["default_f1"], 4), "tried": found["tried"]}
    return new, report


def _write_history(folder: Path, history: list[dict]) -> None:
    (folder / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    if history:
        keys = list(history[0])
        with open(folder / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
