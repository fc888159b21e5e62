"""PanopticNet: the Mesmer network (coordinate channels, backbone C3-C5, FPN, four semantic heads).

Keras 3 only (``keras.ops``, no direct TensorFlow), so the same graph runs under the JAX backend.
The structure follows the published Mesmer model (deepcell-tf 0.12): see DESIGN.md, "Model".
"""
from __future__ import annotations

import keras
from keras import layers, ops

# Mesmer's output order; the rest of the pipeline (training targets, post-processing) relies on it.
OUTPUT_NAMES = ("whole_cell_distance", "whole_cell_pixelwise", "nuclear_distance", "nuclear_pixelwise")
OUTPUT_CLASSES = (1, 3, 1, 3)
PIXELWISE_CLASSES = ("border", "interior", "background")

# The heads need C5 (stride 32) to line up with C4 and C3 after x2 upsampling, so sides must divide by 32.
MODEL_STRIDE = 32

# name -> (constructor, feature layer names at strides 8, 16, 32)
_BACKBONES = {
    "resnet50": ("ResNet50", ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")),
    "mobilenetv2": ("MobileNetV2", ("block_5_add", "block_12_add", "block_16_project_BN")),
    "efficientnetv2b0": ("EfficientNetV2B0", ("block3b_add", "block5e_add", "block6h_add")),
}
BACKBONES = tuple(_BACKBONES)
LIGHT_BACKBONE = "mobilenetv2"


@keras.saving.register_keras_serializable(package="cellloop")
class Location2D(layers.Layer):
    """Two channels holding each pixel's row and column, scaled to [0, 1] across the input.

    Gives the translation-invariant convolutions a sense of position within the tile, as in Mesmer.
    """

    def call(self, inputs):
        shape = ops.shape(inputs)
        n, h, w = shape[0], shape[1], shape[2]
        rows = ops.arange(h, dtype="float32") / ops.cast(ops.maximum(h - 1, 1), "float32")
        cols = ops.arange(w, dtype="float32") / ops.cast(ops.maximum(w - 1, 1), "float32")
        grid = ops.stack(
            [ops.broadcast_to(rows[:, None], (h, w)), ops.broadcast_to(cols[None, :], (h, w))], axis=-1
        )
        grid = ops.broadcast_to(grid[None], (n, h, w, 2))
        return ops.cast(grid, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="cellloop")
class BilinearUpsample2x(layers.Layer):
    """x2 bilinear upsampling (half-pixel centres, edges clamped) that works with unknown H, W.

    Keras 3.15's ``UpSampling2D(interpolation="bilinear")`` fails in TensorFlow graph mode once the
    spatial size is traced as unknown, which happens as soon as one model sees two tile sizes.
    """

    @staticmethod
    def _double(x, axis):
        n = ops.shape(x)[axis]
        first = ops.take(x, [0], axis=axis)
        last = ops.take(x, ops.arange(n - 1, n), axis=axis)
        prev = ops.concatenate([first, ops.take(x, ops.arange(0, n - 1), axis=axis)], axis=axis)
        nxt = ops.concatenate([ops.take(x, ops.arange(1, n), axis=axis), last], axis=axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        both = ops.stack([even, odd], axis=axis + 1)
        shape = ops.shape(x)
        new_shape = [shape[i] for i in range(4)]
        new_shape[axis] = shape[axis] * 2
        return ops.reshape(both, new_shape)

    def call(self, inputs):
        return self._double(self._double(inputs, 1), 2)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else 2 * h, None if w is None else 2 * w, c)


def _backbone(name: str, bn_momentum: float | None) -> keras.Model:
    """A headless backbone taking 3 channels and returning [C3, C4, C5]."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    ctor_name, feature_names = _BACKBONES[name]
    kwargs = dict(input_shape=(None, None, 3), include_top=False, weights=None)
    if name == "mobilenetv2":
        kwargs["alpha"] = 0.5
    if name == "efficientnetv2b0":
        # Inputs are already normalised to [0, 1] by pre-processing; skip the ImageNet rescaling.
        kwargs["include_preprocessing"] = False
    base = getattr(keras.applications, ctor_name)(**kwargs)
    if bn_momentum is not None:
        # MobileNetV2/EfficientNet use momentum 0.999, whose moving statistics need thousands of steps
        # to forget their initial values; short from-scratch trainings then predict with wrong BN stats.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    feats = [base.get_layer(n).output for n in feature_names]
    return keras.Model(base.input, feats, name=f"{name}_backbone")


def _pyramid(c3, c4, c5, filters: int = 256) -> dict:
    """Feature pyramid P3-P7 with ordinary convolutions (RetinaNet style, as Mesmer)."""
    p5 = layers.Conv2D(filters, 1, name="C5_reduced")(c5)
    p5_up = layers.UpSampling2D(2, name="P5_upsampled")(p5)
    p4 = layers.Conv2D(filters, 1, name="C4_reduced")(c4)
    p4 = layers.Add(name="P4_merged")([p5_up, p4])
    p4_up = layers.UpSampling2D(2, name="P4_upsampled")(p4)
    p3 = layers.Conv2D(filters, 1, name="C3_reduced")(c3)
    p3 = layers.Add(name="P3_merged")([p4_up, p3])
    pyramid = {
        "P3": layers.Conv2D(filters, 3, padding="same", name="P3")(p3),
        "P4": layers.Conv2D(filters, 3, padding="same", name="P4")(p4),
        "P5": layers.Conv2D(filters, 3, padding="same", name="P5")(p5),
    }
    p6 = layers.Conv2D(filters, 3, strides=2, padding="same", name="P6")(c5)
    pyramid["P6"] = p6
    pyramid["P7"] = layers.Conv2D(filters, 3, strides=2, padding="same", name="P7")(layers.Activation("relu")(p6))
    return pyramid


HEADS = ("mesmer", "fast")


def _semantic_head(p3, n_classes: int, name: str, bn_momentum: float, style: str = "mesmer", filters: int = 64):
    """One semantic head on P3 (stride 8).

    ``mesmer``: three (conv 64, x2 upsample) steps back to the input size, then the 1x1 conv 128 + BN +
    ReLU + 1x1 logits at full resolution, as in the published model. ``fast``: two steps (to stride 2),
    the same 1x1 stack there, and the few logits bilinearly upsampled x2. The full-resolution 64->128
    conv and the stride-2 3x3 conv are most of a light model's work: ``fast`` trains about 3x faster
    with MobileNetV2 (1.6 s vs 4.7 s per step at 8x256² on 2 CPU cores) for a half-pixel-smooth output.
    ``filters`` is the width of the upsampling convs (Mesmer: 64); the 1x1 stack is twice as wide.
    """
    n_up = 3 if style == "mesmer" else 2
    x = p3
    for i in range(n_up):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = BilinearUpsample2x(name=f"{name}_up{i}")(x)
    x = layers.Conv2D(2 * filters, 1, name=f"{name}_dense")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(n_classes, 1, name=f"{name}_logits")(x)
    for i in range(n_up, 3):
        x = BilinearUpsample2x(name=f"{name}_up{i}")(x)
    activation = "softmax" if n_classes > 1 else "relu"
    # float32 output keeps the softmax stable if a mixed-precision policy is ever set.
    return layers.Activation(activation, dtype="float32", name=name)(x)


def default_heads(backbone: str) -> str:
    """Mesmer's full-resolution heads with its ResNet50; the cheaper heads with the light backbones."""
    return "mesmer" if backbone == "resnet50" else "fast"


def build_panoptic(
    n_channels: int = 2,
    backbone: str = "resnet50",
    bn_momentum: float = 0.99,
    name: str | None = None,
    heads: str | None = None,
    pyramid_filters: int = 256,
    head_filters: int = 64,
    location: bool = True,
) -> keras.Model:
    """The Mesmer PanopticNet for ``n_channels`` input channels (nuclear, membrane by default).

    Input is ``(None, None, n_channels)``: one model serves 256 tiles and whole images whose sides are
    multiples of ``MODEL_STRIDE``. Outputs, in order, are ``OUTPUT_NAMES``. ``heads`` is ``"mesmer"``
    or ``"fast"`` (see ``_semantic_head``); by default ``default_heads(backbone)``.

    With a light backbone the pyramid's P3 conv and the four heads are most of the work (about 95% of
    2.5 GMAC per 256² tile with MobileNetV2), so ``pyramid_filters`` (Mesmer: 256) and ``head_filters``
    (Mesmer: 64) set the cost. ``location=False`` leaves out the coordinate channels: the network then
    depends on content only, so a tile's prediction does not depend on where the tile was cut, and a
    model trained on small crops predicts the same on larger tiles.
    """
    heads = heads or default_heads(backbone)
    if heads not in HEADS:
        raise ValueError(f"unknown head style {heads!r}; choose one of {', '.join(HEADS)}")
    if int(n_channels) < 1:
        raise ValueError(f"n_channels must be at least 1, got {n_channels}")
    inputs = keras.Input(shape=(None, None, int(n_channels)), name="image")
    x = inputs
    if location:
        loc = Location2D(name="location")(inputs)
        x = layers.Concatenate(axis=-1, name="with_location")([inputs, loc])
    # Backbones expect 3 channels; a learned 1x1 mix lets any panel size feed them.
    x = layers.Conv2D(3, 1, name="conv_channels")(x)
    c3, c4, c5 = _backbone(backbone, bn_momentum)(x)
    pyramid = _pyramid(c3, c4, c5, filters=int(pyramid_filters))
    outputs = [
        _semantic_head(pyramid["P3"], k, out_name, bn_momentum, heads, filters=int(head_filters))
        for out_name, k in zip(OUTPUT_NAMES, OUTPUT_CLASSES)
    ]
    return keras.Model(inputs, outputs, name=name or f"panoptic_{backbone}")


def check_mesmer_outputs(model: keras.Model) -> None:
    """Raise ValueError unless ``model`` has Mesmer's four outputs (1, 3, 1, 3 channels)."""
    outs = model.outputs
    if len(outs) != 4:
        raise ValueError(f"a Mesmer model needs 4 outputs, this one has {len(outs)}")
    got = tuple(int(o.shape[-1]) for o in outs)
    if got != OUTPUT_CLASSES:
        raise ValueError(f"a Mesmer model's outputs have {OUTPUT_CLASSES} channels, this one has {got}")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError("a Mesmer model takes one (batch, height, width, channels) input")
