import ast
from pathlib import Path

import numpy as np
import pytest

import keras  # a hard dependency: a broken install fails the suite, never skips it

from pipeline.model import losses, panoptic  # noqa: E402

MODEL_DIR = Path(panoptic.__file__).resolve().parent
OWN_MODULES = ["panoptic.py", "losses.py", "train.py", "predict.py", "saving.py", "commands.py"]


@pytest.fixture(scope="module")
def light():
    return panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE)


def test_resnet50_parameter_count_matches_published_mesmer():
    model = panoptic.build_panoptic(2, "resnet50")
    # The published Mesmer PanopticNet has about 26.0 M parameters.
    assert abs(model.count_params() - 26.0e6) / 26.0e6 < 0.02
    # Only the path to P3 takes part: the unused P4-P7 convolutions would add ~6.5 M.
    names = {layer.name for layer in model.layers}
    assert "P3" in names and "P6" not in names


def test_outputs_named_ordered_and_shaped_for_any_stride_multiple(light):
    assert tuple(light.output_names) == panoptic.OUTPUT_NAMES
    for h, w in [(64, 96), (256, 256)]:
        outs = light.predict_on_batch(np.random.default_rng(0).random((2, h, w, 2), dtype=np.float32))
        assert [o.shape for o in outs] == [(2, h, w, 1), (2, h, w, 3), (2, h, w, 1), (2, h, w, 3)]
        assert min(outs[0].min(), outs[2].min()) >= 0.0  # ReLU distance heads
        np.testing.assert_allclose(outs[1].sum(-1), 1.0, atol=1e-4)  # softmax pixelwise heads
        np.testing.assert_allclose(outs[3].sum(-1), 1.0, atol=1e-4)


def test_any_channel_count():
    model = panoptic.build_panoptic(6, panoptic.LIGHT_BACKBONE)
    assert model.inputs[0].shape[-1] == 6
    outs = model.predict_on_batch(np.zeros((1, 64, 64, 6), np.float32))
    assert outs[1].shape == (1, 64, 64, 3)


def test_head_styles_differ_only_in_where_the_logits_reach_full_size():
    fast = panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE, heads="fast")
    mesmer = panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE, heads="mesmer")
    # The fast heads drop one 3x3 conv 64->64 per head (4 x 36,928 weights); nothing else changes.
    assert mesmer.count_params() - fast.count_params() == 4 * (3 * 3 * 64 * 64 + 64)
    x = np.random.default_rng(1).random((1, 64, 64, 2), dtype=np.float32)
    for model in (fast, mesmer):
        assert [o.shape for o in model.predict_on_batch(x)] == [(1, 64, 64, 1), (1, 64, 64, 3)] * 2
    # The fast heads' dense stack works at stride 2: its last layer before upsampling is half size.
    half = keras.Model(fast.inputs, fast.get_layer("whole_cell_pixelwise_logits").output)
    assert half.predict_on_batch(x).shape == (1, 32, 32, 3)
    assert panoptic.default_heads("resnet50") == "mesmer" and panoptic.default_heads("mobilenetv2") == "fast"
    with pytest.raises(ValueError, match="unknown head style"):
        panoptic.build_panoptic(2, panoptic.LIGHT_BACKBONE, heads="huge")


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        panoptic.build_panoptic(2, "vgg1")


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientnetv2b0"])
def test_backbone_features_have_strides_8_16_32(backbone):
    bb = panoptic._backbone(backbone, 0.99)
    feats = bb.predict_on_batch(np.zeros((1, 128, 128, 3), np.float32))
    assert [f.shape[1] for f in feats] == [16, 8, 4]


def test_location_layer_spans_unit_square():
    loc = keras.ops.convert_to_numpy(panoptic.Location2D()(np.zeros((3, 5, 9, 2), np.float32)))
    assert loc.shape == (3, 5, 9, 2)
    np.testing.assert_allclose(loc[0, :, 0, 0], np.linspace(0, 1, 5), atol=1e-6)
    np.testing.assert_allclose(loc[2, 0, :, 1], np.linspace(0, 1, 9), atol=1e-6)


def test_weighted_crossentropy_balances_classes():
    # 1 border pixel among 99 background pixels, all predicted wrong in the same way: without
    # balancing the border would count 1/100; with it, each class contributes the same total.
    y_true = np.zeros((1, 10, 10, 3), np.float32)
    y_true[..., 2] = 1
    y_true[0, 0, 0] = [1, 0, 0]
    y_pred = np.full((1, 10, 10, 3), 1 / 3, np.float32)
    per_pixel = keras.ops.convert_to_numpy(losses.weighted_categorical_crossentropy(y_true, y_pred))
    border_total = per_pixel[0, 0, 0]
    background_total = per_pixel.sum() - border_total
    assert border_total == pytest.approx(background_total, rel=1e-5)
    # An absent class (interior) must not make the loss infinite.
    assert np.isfinite(per_pixel).all()


def test_distance_mse():
    y_true = np.zeros((1, 4, 4, 1), np.float32)
    y_pred = np.full((1, 4, 4, 1), 0.5, np.float32)
    assert keras.ops.convert_to_numpy(losses.distance_mse(y_true, y_pred)).mean() == pytest.approx(0.25)


def test_nuclear_weight_zero_switches_off_nuclear_heads():
    _, weights = losses.mesmer_losses(nuclear_weight=0.0)
    assert weights[2] == 0 and weights[3] == 0 and weights[0] == 1 and weights[1] == pytest.approx(0.01)


def test_own_modules_do_not_import_tensorflow_directly():
    # The network, losses and training must run under KERAS_BACKEND=jax on the GPU machine.
    for name in OWN_MODULES:
        tree = ast.parse((MODEL_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in mods), name
