"""Where the generalist starter model lives: a model version folder shipped inside the package
(`pipeline/model/starter/model.keras` + `config.json`). New projects start their lineage from it, and
`cellloop predict` / `demo` use it when no model is named."""
from __future__ import annotations

from pathlib import Path

STARTER_DIR = Path(__file__).resolve().parent / "starter"


def starter_model_dir() -> Path | None:
    """The shipped starter model's folder, or None when this checkout has none."""
    if (STARTER_DIR / "model.keras").is_file() and (STARTER_DIR / "config.json").is_file():
        return STARTER_DIR
    return None


def pick_channels(names) -> tuple[int, int]:
    """(nuclear, membrane) indices from channel names, by `pipeline.channels.choose_model_channels` (the one
    rule ingest, prelabel and predict share); a one-channel image gives its nuclear channel twice."""
    from pipeline.channels import choose_model_channels

    if not list(names):
        raise ValueError("the image has no channels")
    choice = choose_model_channels(names)
    return choice.nuclear, choice.nuclear if choice.membrane is None else choice.membrane


def segment(image, channel_names=None, *, nuclear=None, membrane=None, image_mpp="auto", compartment="both"):
    """Labels (H, W, 2) [whole-cell, nuclear] for ``image`` (H, W, C) from the starter model.

    Channels are the indices ``nuclear``/``membrane`` when given, else picked from ``channel_names`` by
    ``pick_channels``. ``image_mpp`` is "auto" (estimated from the cells) or µm per pixel. Raises
    FileNotFoundError when this installation has no starter model.
    """
    import numpy as np

    from pipeline.model.predict import Mesmer

    folder = starter_model_dir()
    if folder is None:
        raise FileNotFoundError("no starter model in this installation (pipeline/model/starter/)")
    image = np.asarray(image)
    names = channel_names if channel_names is not None else [f"channel_{i}" for i in range(image.shape[-1])]
    picked = pick_channels(names)
    nuclear = picked[0] if nuclear is None else int(nuclear)
    membrane = picked[1] if membrane is None else int(membrane)
    X = image[..., [nuclear, membrane]].astype(np.float32)
    return Mesmer(folder).predict(X, image_mpp=image_mpp, compartment=compartment)
