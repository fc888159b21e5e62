"""Fine-tuning a model on a lab's corrected cells within CPU minutes without forgetting what it knew.

- a wall-clock budget (``minutes``) instead of a step count, so a cycle costs what the admin allows;
- replay: a share of every batch is drawn from the synthetic tissue the starter model was trained on
  (``starter_recipe.synthetic_data`` with the recipe's own seeds), so a few hundred new cells do not
  overwrite what the model learnt from tens of thousands;
- a fine-tuning schedule: the learning rate ramps up over the first epoch (a fresh Adam state's first steps
  are its largest), then decays slowly;
- early stopping on the validation loss (``patience`` epochs without a new best), the best epoch's
  weights kept;
- post-processing recalibrated on the new validation images (``train.train``'s ``calibrate``).
"""
from __future__ import annotations

import numpy as np

# What `cellloop cycle` uses unless told otherwise.
FINE_TUNE = dict(
    minutes=10.0,
    replay=0.25,  # share of each batch drawn from synthetic replay tiles
    n_replay=48,  # replay tiles made per cycle (~0.3 s each at 256 px)
    patience=4,
    warmup_epochs=1,
    steps_per_epoch=12,
    lr=1e-4,
    lr_decay=0.97,
    max_epochs=10_000,  # the budget or early stopping ends training first
)


def replay_tiles(n: int, shape, seed: int | None = None):
    """``n`` synthetic tissues of ``shape`` drawn like the starter's training tissue (its recipe's seeds)."""
    from pipeline.model import starter_recipe

    seed = starter_recipe.RECIPE["synthetic_seed"] if seed is None else int(seed)
    X, y, _ = starter_recipe.synthetic_data(int(n), seed, shape=tuple(int(s) for s in shape))
    return X, y


def with_replay(X, y, *, share: float, n: int, mask=None, seed: int | None = None):
    """The new data plus ``n`` replay tiles drawn in ``share`` of the batches.

    Returns (X, y, mask or None, layer_weights, sampling, record). The new tiles' nuclear heads are trained
    only on tiles whose labels hold nuclei (whole-cell corrections say nothing about nuclei); replay trains both.
    """
    X, y = np.asarray(X, np.float32), np.asarray(y, np.int32)
    if not 0.0 <= float(share) < 1.0:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    has_nuclei = y[..., 1].reshape(len(y), -1).any(axis=1)
    weights = np.stack([np.ones(len(y)), has_nuclei.astype(np.float64)], -1).astype(np.float32)
    record = {"share": float(share), "tiles": 0}
    if share == 0 or n <= 0:
        return X, y, mask, weights, None, record
    Xr, yr = replay_tiles(n, X.shape[1:3], seed)
    record.update(tiles=int(n), source="pipeline.model.starter_recipe.synthetic_data (the starter's seeds)")
    sampling = np.concatenate([np.full(len(X), (1.0 - share) / len(X)), np.full(n, share / n)])
    if mask is not None:
        mask = np.concatenate([np.asarray(mask, bool), np.ones(Xr.shape[:3], bool)])
    return (np.concatenate([X, Xr]), np.concatenate([y, yr]), mask,
            np.concatenate([weights, np.ones((n, 2), np.float32)]), sampling, record)


def fine_tune(X, y, *, from_version, val=None, mask=None, minutes: float | None = None, replay: float | None = None,
              n_replay: int | None = None, patience: int | None = None, epochs: int | None = None,
              steps_per_epoch: int | None = None, batch_size: int = 8, crop_size: int = 256, lr: float | None = None,
              seed: int = 0, out=None, **train_kwargs):
    """``train.train`` from ``from_version`` with the ``FINE_TUNE`` recipe (each keyword overrides it)."""
    from pipeline.model import train

    opts = dict(FINE_TUNE)
    for key, value in (("minutes", minutes), ("replay", replay), ("n_replay", n_replay), ("patience", patience),
                       ("steps_per_epoch", steps_per_epoch), ("lr", lr)):
        if value is not None:
            opts[key] = value
    if not float(opts["minutes"]) > 0:
        raise ValueError(f"the training budget must be positive, got {opts['minutes']} minutes")
    X, y = np.asarray(X, np.float32), np.asarray(y, np.int32)
    if val is None and len(X) >= 2:
        # Validation comes from the new tiles only, never from replay: it is what early stopping and the
        # post-processing recalibration look at.
        order = np.random.default_rng(seed).permutation(len(X))
        n_val = max(1, int(round(0.1 * len(X))))
        val = (X[order[:n_val]], y[order[:n_val]]) + (() if mask is None else (np.asarray(mask)[order[:n_val]],))
        X, y = X[order[n_val:]], y[order[n_val:]]
        mask = None if mask is None else np.asarray(mask)[order[n_val:]]
    Xa, ya, ma, weights, sampling, record = with_replay(X, y, share=float(opts["replay"]), n=int(opts["n_replay"]),
                                                        mask=mask, seed=train_kwargs.pop("replay_seed", None))
    nuclear = 1.0 if record["tiles"] or bool(np.any(y[..., 1])) else 0.0
    return train.train(
        Xa, ya, mask=ma, val=val, val_split=0.0, from_version=from_version,
        epochs=int(epochs or opts["max_epochs"]), steps_per_epoch=int(opts["steps_per_epoch"]),
        batch_size=batch_size, crop_size=crop_size, lr=float(opts["lr"]), lr_decay=float(opts["lr_decay"]),
        warmup_epochs=int(opts["warmup_epochs"]), patience=int(opts["patience"]) if opts["patience"] else None,
        max_seconds=float(opts["minutes"]) * 60, layer_weights=weights, sampling=sampling,
        nuclear_weight=nuclear, seed=seed, out=out,
        extra_config={"fine_tune": {"minutes": float(opts["minutes"]), "replay": record,
                                    "recipe": "pipeline.model.finetune.FINE_TUNE"}},
        **train_kwargs)
