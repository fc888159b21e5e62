"""Mesmer's training losses, written with ``keras.ops`` so they run on any Keras backend.

MSE on the inner-distance heads; class-balanced softmax cross-entropy on the pixelwise heads,
weighted 0.01 in the total (the weight is applied through ``loss_weights`` at compile time).
"""
from __future__ import annotations

import keras
from keras import ops

PIXELWISE_LOSS_WEIGHT = 0.01
_EPS = 1e-7


@keras.saving.register_keras_serializable(package="cellloop")
def distance_mse(y_true, y_pred):
    return ops.mean(ops.square(ops.cast(y_true, y_pred.dtype) - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="cellloop")
def weighted_categorical_crossentropy(y_true, y_pred):
    """Softmax cross-entropy with per-batch class weights ``total / (n_classes * count_c)``.

    Background dominates tissue crops and borders are thin; without the balancing the border class,
    which is what separates touching cells, would barely contribute. Classes absent from the batch
    get weight 0 rather than infinity.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    n_classes = ops.cast(ops.shape(y_true)[-1], y_pred.dtype)
    counts = ops.sum(y_true, axis=tuple(range(len(y_true.shape) - 1)))
    total = ops.sum(counts)
    weights = ops.where(counts > 0, total / (n_classes * ops.maximum(counts, 1.0)), 0.0)
    log_p = ops.log(ops.clip(y_pred, _EPS, 1.0))
    return -ops.sum(y_true * log_p * weights, axis=-1)


def mesmer_losses(nuclear_weight: float = 1.0) -> tuple[list, list]:
    """Losses and loss weights for the four outputs, in Mesmer's output order.

    ``nuclear_weight=0`` trains the whole-cell heads only (for data without nuclear labels).
    """
    losses = [distance_mse, weighted_categorical_crossentropy, distance_mse, weighted_categorical_crossentropy]
    weights = [1.0, PIXELWISE_LOSS_WEIGHT, float(nuclear_weight), PIXELWISE_LOSS_WEIGHT * float(nuclear_weight)]
    return losses, weights
