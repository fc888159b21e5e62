"""The Mesmer application: whole images in, whole-cell and nuclear labels out.

resample to the model's pixel size -> normalise (percentile clip + CLAHE) -> 256 px tiles through the
network, blended with a spline window -> deep watershed -> labels resampled back to the input grid.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pipeline.model import postprocess, preprocess, tiling

TILE = 256
STRIDE = 192
# Bigger tiles would cost fewer network passes a pixel (1.31 for 512/448 against 1.78 for 256/192), but measured on
# the starter they change a quarter of the cells (IoU under 0.9 against 256/192; even 256/128 changes 9%): the network
# is not context-free, so ``tile``/``stride`` are settings and the published grid stays the default. Measured again on
# the starter with OpenVINO (2048² synthetic tissue, pipeline.agreement.changed_share against 256/192): 512/448 changes
# 3.0% of cells and keeps 14% pixel for pixel, 256/224 changes 2.2% and keeps 12%; the runtime tests allow 0.5% / 2%.
COMPARTMENTS = ("both", "whole-cell", "nuclear")


class Mesmer:
    """Segment (H, W, C) images with a Mesmer-order model.

    ``model`` is a ModelVersion, a model version folder or ``.keras`` path, or a Keras model (then
    ``config`` may give ``mpp``, ``channels`` and ``postprocess`` defaults). After each ``predict``,
    ``timings`` holds the seconds spent in pre-processing, the network and post-processing, and
    ``last_outputs`` the four network outputs of the last image (on the model's pixel grid), from which
    ``pipeline.model.maps`` makes the maps the editor's assist tools read.
    """

    def __init__(self, model, config: dict | None = None, *, runtime: str | None = None,
                 tile: int | None = None, stride: int | None = None):
        from pipeline.model import runtime as runtimes
        from pipeline.model import saving

        if isinstance(model, (str, Path)):
            model = saving.load_model_version(model)
        if isinstance(model, saving.ModelVersion):
            version = model
        else:
            from pipeline.model import panoptic

            panoptic.check_mesmer_outputs(model)
            cfg = saving.default_config(int(model.inputs[0].shape[-1]))
            cfg.update(config or {})
            version = saving.ModelVersion(model=model, config=cfg)
        self.version = version
        self.model = version.model
        self.config = version.config
        self.model_mpp = version.mpp
        self.n_channels = int(self.model.inputs[0].shape[-1])
        self.timings = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0}
        self.scale_estimates: list = []
        self.last_outputs: list | None = None
        # The inference runtime: the one asked for, else CELLLOOP_INFERENCE_RUNTIME, else the default
        # (runtime.DEFAULT_RUNTIME) for versions stored with a model.keras (an exported runtime exports once and
        # caches beside it) and Keras for models held only in memory, which would pay an export each time.
        # The export converts a TensorFlow graph (tf2onnx), so under another Keras backend the default is Keras too.
        import keras

        stored = version.path is not None and (Path(version.path) / saving.MODEL_FILE).is_file()
        exportable = stored and keras.backend.backend() == "tensorflow"
        chosen = runtime or os.environ.get("CELLLOOP_INFERENCE_RUNTIME") or None
        self.runtime = runtimes.check_runtime(chosen or (runtimes.DEFAULT_RUNTIME if exportable else "keras"))
        self._runtime_explicit = chosen is not None
        self.tile = int(tile or TILE)
        self.stride = int(stride or (STRIDE if self.tile == TILE else self.tile * 3 // 4))
        self._net = None

    def _network(self, batch: np.ndarray):
        return self._ensure_network()(batch)

    def _ensure_network(self):
        if self._net is None:
            from pipeline.model import runtime as runtimes

            try:
                self._net = runtimes.network_for(self.version, self.runtime)
            except runtimes.RuntimeUnavailable as exc:
                if self._runtime_explicit:
                    raise
                import warnings

                warnings.warn(f"{exc}; predicting with Keras instead", RuntimeWarning, stacklevel=2)
                self.runtime, self._net = "keras", runtimes.KerasNetwork(self.model)
        return self._net

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim not in (3, 4):
            raise ValueError(f"expected an image (H, W, C) or a batch (N, H, W, C), got shape {X.shape}")
        if X.shape[-1] != self.n_channels:
            raise ValueError(
                f"the model takes {self.n_channels} channels ({', '.join(self.config['channels'])}), "
                f"the image has {X.shape[-1]}"
            )
        if min(X.shape[-3:-1]) < 1:
            raise ValueError(f"empty image of shape {X.shape}")
        return X

    def predict_outputs(self, X, image_mpp: float | None = None, batch_size: int = 8, progress=None, ranges=None):
        """The four blended network outputs for one image, on the model's pixel grid. ``ranges``: per channel
        (low, high) intensities to normalise by (a slide's, so its blocks match), instead of the image's own."""
        X = self._check(X)
        if X.ndim != 3:
            raise ValueError("predict_outputs takes one image (H, W, C)")
        t0 = time.perf_counter()
        Xm = X if image_mpp is None else preprocess.resample(X, image_mpp, self.model_mpp)
        Xm = preprocess.normalize(Xm) if ranges is None else preprocess.normalize(Xm, ranges=ranges)
        t1 = time.perf_counter()
        # batch_size counts 256 px tiles: bigger tiles go fewer to a batch, so the network's memory stays the same
        tiles_per_batch = max(1, (batch_size * TILE * TILE) // (self.tile * self.tile))
        self._ensure_network()
        # Only Keras traces again for a new batch shape; the exported runtimes take a short last batch as it is.
        outputs = tiling.tile_predict(
            self._network, Xm, tile=self.tile, stride=self.stride, batch_size=tiles_per_batch, progress=progress,
            fixed_batches=self.runtime == "keras",
        )
        t2 = time.perf_counter()
        self.timings["preprocess_s"] += t1 - t0
        self.timings["network_s"] += t2 - t1
        return outputs

    def predict(
        self,
        X,
        image_mpp: float | None = None,
        compartment: str = "both",
        batch_size: int = 8,
        progress=None,
        postprocess_kwargs: dict | None = None,
        ranges=None,
    ) -> np.ndarray:
        """Labels int32 (H, W, 2) [whole-cell, nuclear] for X (H, W, C), or (N, H, W, 2) for a batch.

        ``image_mpp`` is the image's µm per pixel (None: already at the model's; ``"auto"``: estimated
        from the image's own cells by ``autoscale.estimate_image_mpp``, one estimate per image, kept in
        ``scale_estimates``). With
        ``compartment`` "whole-cell" or "nuclear" only that layer is computed; the other stays 0,
        so the result keeps the (H, W, 2) layout. ``ranges``: see ``predict_outputs``.
        """
        if compartment not in COMPARTMENTS:
            raise ValueError(f"compartment must be one of {', '.join(COMPARTMENTS)}, got {compartment!r}")
        if image_mpp is not None and image_mpp != "auto" and not float(image_mpp) > 0:
            raise ValueError(f"image_mpp must be positive or 'auto', got {image_mpp}")
        X = self._check(X)
        self.timings = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0, "scale_s": 0.0}
        self.scale_estimates = []
        if X.ndim == 4:
            return np.stack(
                [self._predict_one(x, image_mpp, compartment, batch_size, progress, postprocess_kwargs, ranges)
                 for x in X]
            )
        return self._predict_one(X, image_mpp, compartment, batch_size, progress, postprocess_kwargs, ranges)

    def _predict_one(self, X, image_mpp, compartment, batch_size, progress, postprocess_kwargs, ranges=None):
        h, w = X.shape[:2]
        if image_mpp == "auto":
            from pipeline.model import autoscale

            t0 = time.perf_counter()
            saved = dict(self.timings)
            estimate = autoscale.estimate_image_mpp(self, X)
            # The probe passes count as scale estimation, not as this image's pre/network time.
            self.timings = {**saved, "scale_s": saved.get("scale_s", 0.0) + time.perf_counter() - t0}
            self.scale_estimates.append(estimate)
            image_mpp = estimate.image_mpp
        outputs = self.predict_outputs(X, image_mpp, batch_size, progress, ranges)
        self.last_outputs = outputs
        t0 = time.perf_counter()
        kwargs = {**(self.config.get("postprocess") or {}), **(postprocess_kwargs or {})}
        labels = postprocess.postprocess_mesmer(outputs, compartment=compartment, **kwargs)
        if compartment != "both":
            both = np.zeros(labels.shape[:2] + (2,), np.int32)
            both[..., 0 if compartment == "whole-cell" else 1] = labels[..., 0]
            labels = both
        if labels.shape[:2] != (h, w):
            labels = preprocess.resample_labels(labels, (h, w))
        self.timings["postprocess_s"] += time.perf_counter() - t0
        return labels.astype(np.int32, copy=False)
