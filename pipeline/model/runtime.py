"""The network at inference time: Keras itself, or the model exported to ONNX and run by ONNX Runtime or OpenVINO.

Training stays Keras; only prediction changes runtime. The ONNX file is exported once per model version and cached
next to it (``<version>/.runtime/model.onnx``, keyed by the sha-256 of ``model.keras``, so a retrained file is
exported again), and copied into a content-addressed cache (``CELLLOOP_MODEL_CACHE`` or ``~/.cache/cellloop``) that
read-only folders use and from which another copy of the same file takes its export instead of exporting again. Nothing here touches the network: export is local.

Every runtime is a callable ``batch (B, h, w, C) float32 -> [4 arrays (B, h, w, k)]`` in Mesmer's output order.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

RUNTIMES = ("onnxruntime", "openvino", "keras")
# Measured here (bench/model.py --case network@256x8, the three interleaved on one 8 x 256² batch of the starter, on
# 2 cores shared at load 7-9): Keras/TensorFlow (oneDNN) 0.54-0.58 s, ONNX Runtime 0.75-1.29 s, OpenVINO 1.76 s,
# with labels identical at 2048². Neither exported runtime beat TensorFlow, so Keras stays the default and the
# others are a setting (CELLLOOP_INFERENCE_RUNTIME) for machines where they win.
DEFAULT_RUNTIME = "keras"
CACHE_DIR = ".runtime"
ONNX_FILE = "model.onnx"
STAMP_FILE = "model.onnx.json"


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

            with native_stderr_silenced():
                model.export(str(tmp / ONNX_FILE), format="onnx", verbose=False, input_signature=spec)
        except Exception as exc:  # tf2onnx raises many kinds for an unsupported graph
            raise RuntimeUnavailable(f"cannot export the model to ONNX: {str(exc).strip().splitlines()[0]}") from None
        os.replace(tmp / ONNX_FILE, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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
    stamp.write_text(json.dumps({"keras_sha256": sha, "exporter": "keras.export(format='onnx')"}) + "\n")
    if shared != folder:
        try:
            _copy_export(folder, shared)
        except OSError:
            pass  # the shared cache only saves time; the export beside the version is what is used
    return onnx_path


def _stamped(folder: Path, sha: str) -> bool:
    try:
        return (folder / ONNX_FILE).is_file() and json.loads((folder / STAMP_FILE).read_text()).get("keras_sha256") == sha
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
