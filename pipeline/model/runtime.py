"""The network at inference time: Keras itself, or the model exported to ONNX and run by ONNX Runtime or OpenVINO.

Training stays Keras; only prediction changes runtime. The ONNX file is exported once per model version and cached
next to it (``<version>/.runtime/model.onnx``, keyed by the sha-256 of ``model.keras`` and by ``EXPORTER``, so a retrained
file, or a file exported the old way, is exported again), and copied into a content-addressed cache (``CELLLOOP_MODEL_CACHE`` or ``~/.cache/cellloop``) that
read-only folders use and from which another copy of the same file takes its export instead of exporting again. Nothing here touches the network: export is local.

Every runtime is a callable ``batch (B, h, w, C) float32 -> [4 arrays (B, h, w, k)]`` in Mesmer's output order.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

RUNTIMES = ("onnxruntime", "openvino", "keras")
# Measured here (the starter's network on one batch of 8 256² tiles, 2 cores, runtimes interleaved; median wall / CPU
# ms at load 2.8): with the export as Keras traces it, ONNX Runtime 234 / 365 and OpenVINO 377 / 632 (Keras about
# 190 wall at idle); with the x2 upsampling exported as one Resize node (EXPORTER below) ONNX Runtime 205 / 301 and
# OpenVINO 138 / 265. OpenVINO on the Resize export is the fastest, labels as Keras' (2048²: no cell changed, 1 of
# 13,370 not kept pixel for pixel), so it is the default; the others stay a setting (CELLLOOP_INFERENCE_RUNTIME).
# Rejected, measured: int8 static quantisation with onnxruntime.quantization (QDQ, per channel; 1.4x less CPU but
# 3.6% of cells changed and 95% not kept pixel for pixel, against the runtime tests' 0.5% / 2%), and OpenVINO
# bfloat16 (slower here, 80% of cells changed).
DEFAULT_RUNTIME = "openvino"
CACHE_DIR = ".runtime"
ONNX_FILE = "model.onnx"
STAMP_FILE = "model.onnx.json"
# Part of the stamp: an export made by an older exporter is made again, not reused.
EXPORTER = "keras.export(format='onnx'), x2 upsampling as Resize"


class RuntimeUnavailable(RuntimeError):
    """The chosen runtime cannot run this model (export failed, or the runtime refused the graph)."""


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise ValueError(f"inference runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    return name


def _writable(folder: Path) -> bool:
    try:
        (folder / CACHE_DIR).mkdir(exist_ok=True)
        probe = folder / CACHE_DIR / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def shared_cache(model_sha: str) -> Path:
    """The machine's content-addressed export cache: the same model.keras copied into several folders (the model
    registry's per-instance copies) is exported once."""
    root = Path(os.environ.get("CELLLOOP_MODEL_CACHE") or Path.home() / ".cache" / "cellloop")
    return root / "onnx" / model_sha[:32]


def cache_folder(version_path: Path, model_sha: str) -> Path:
    """Where the export of the version at ``version_path`` lives: beside it, or in the shared cache if read-only."""
    version_path = Path(version_path)
    if _writable(version_path):
        return version_path / CACHE_DIR
    return shared_cache(model_sha)


def export_onnx(model, path: Path) -> Path:
    """Export a Keras Mesmer model to ONNX at ``path`` (any batch and tile size), atomically."""
    import keras

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_channels = int(model.inputs[0].shape[-1])
    tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=path.parent))
    try:
        spec = [keras.InputSpec(shape=(None, None, None, n_channels), dtype="float32")]
        try:
            from pipeline.quiet import native_stderr_silenced

            with native_stderr_silenced(), _native_upsampling():
                model.export(str(tmp / ONNX_FILE), format="onnx", verbose=False, input_signature=spec)
        except Exception as exc:  # tf2onnx raises many kinds for an unsupported graph
            raise RuntimeUnavailable(f"cannot export the model to ONNX: {str(exc).strip().splitlines()[0]}") from None
        os.replace(tmp / ONNX_FILE, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextlib.contextmanager
def _native_upsampling():
    """While exporting, trace ``BilinearUpsample2x`` as TensorFlow's bilinear resize (half-pixel centres, edges
    clamped: the same interpolation), which becomes one ONNX Resize node instead of the gathers, concatenations and
    reshapes that the backend-neutral layer is made of (38% of ONNX Runtime's kernel time on the starter, measured
    with its profiler). Keras' own graph, and training, keep the layer as it is."""
    import keras

    from pipeline.model import panoptic

    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    def call(self, inputs):
        return tf.image.resize(inputs, tf.shape(inputs)[1:3] * 2, method="bilinear")

    original = panoptic.BilinearUpsample2x.call
    panoptic.BilinearUpsample2x.call = call
    try:
        yield
    finally:
        panoptic.BilinearUpsample2x.call = original


def cached_onnx(version) -> Path:
    """The ONNX export of a ModelVersion, made on first use and reused while ``model.keras`` is unchanged."""
    from pipeline.model import saving

    if version.path is None or not (Path(version.path) / saving.MODEL_FILE).is_file():
        # a model held only in memory: export into a private temporary folder, no cache to go stale
        folder = Path(tempfile.mkdtemp(prefix="cellloop-onnx-"))
        return export_onnx(version.model, folder / ONNX_FILE)
    sha = saving.sha256_file(Path(version.path) / saving.MODEL_FILE)
    folder = cache_folder(Path(version.path), sha)
    onnx_path, stamp = folder / ONNX_FILE, folder / STAMP_FILE
    if _stamped(folder, sha):
        return onnx_path
    shared = shared_cache(sha)
    if shared != folder and _stamped(shared, sha):
        _copy_export(shared, folder)
        return onnx_path
    export_onnx(version.model, onnx_path)
    stamp.write_text(json.dumps({"keras_sha256": sha, "exporter": EXPORTER}) + "\n")
    if shared != folder:
        try:
            _copy_export(folder, shared)
        except OSError:
            pass  # the shared cache only saves time; the export beside the version is what is used
    return onnx_path


def _stamped(folder: Path, sha: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text())
        return (folder / ONNX_FILE).is_file() and stamp.get("keras_sha256") == sha and stamp.get("exporter") == EXPORTER
    except (OSError, json.JSONDecodeError):
        return False


def _copy_export(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in (ONNX_FILE, STAMP_FILE):  # the stamp last: a half copy is never taken for a whole one
        tmp = target / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, target / name)


class KerasNetwork:
    name = "keras"

    def __init__(self, model):
        self.model = model

    def __call__(self, batch):
        return self.model.predict_on_batch(batch)


class OnnxRuntimeNetwork:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Spinning threads wait for work by burning a core; on a machine shared with the web tier and other jobs
        # that halves everyone's throughput (measured: 0.33 vs 2.2 MP/s for 256² tiles under load), idle or not.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch):
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})


class OpenVinoNetwork:
    name = "openvino"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        # f32 inference: OpenVINO would pick bfloat16 on CPUs that have it, and labels would drift from Keras'.
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "ENABLE_CPU_PINNING": False,
        })
        self.outputs = list(self.compiled.outputs)

    def __call__(self, batch):
        result = self.compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return [result[o] for o in self.outputs]


def network_for(version, runtime: str = DEFAULT_RUNTIME, threads: int | None = None):
    """A callable network for ``version`` on ``runtime`` (see RUNTIMES)."""
    check_runtime(runtime)
    if runtime == "keras":
        return KerasNetwork(version.model)
    onnx_path = cached_onnx(version)
    try:
        if runtime == "onnxruntime":
            return OnnxRuntimeNetwork(onnx_path, threads)
        return OpenVinoNetwork(onnx_path, threads)
    except Exception as exc:
        raise RuntimeUnavailable(f"{runtime} cannot load {onnx_path}: {str(exc).strip().splitlines()[0]}") from None
