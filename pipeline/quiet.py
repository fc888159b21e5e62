"""TensorFlow prints a screen of native start-up lines (oneDNN, CPU features, absl) on stderr the moment it is
imported, before any Python logging setting can reach it. `quiet_tensorflow_import()` makes the first `import
tensorflow` of the process run with the native stderr pointed at /dev/null; Python errors still raise as usual,
and later TensorFlow warnings are kept to warnings and errors."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from contextlib import contextmanager


@contextmanager
def native_stderr_silenced():
    """File descriptor 2 goes to /dev/null inside the block (native libraries write there, not to sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with native_stderr_silenced():
            self.loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: every later import finds the module already loaded
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Silence TensorFlow's start-up lines for this process (no-op once TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())
