"""All settings come from environment variables (prefix CELLLOOP_), with safe embedded defaults:
a SQLite file and a local storage folder under the instance directory."""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CELLLOOP_{name}", default)


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _secret_key(instance_dir: Path) -> str:
    """An explicit key wins; otherwise one is generated once and kept beside the data, so sessions and
    task tokens survive restarts and are shared by every gunicorn worker."""
    explicit = _env("SECRET_KEY")
    if explicit:
        return explicit
    path = instance_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        instance_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def _origins(name: str) -> tuple[str, ...]:
    """Space-separated web origins (scheme://host[:port]); anything else would let a typo, or a stray
    ';', rewrite the page's security policy, so it stops the server from starting."""
    origins = tuple((_env(name) or "").split())
    bad = [o for o in origins if not _ORIGIN.match(o)]
    if bad:
        raise ValueError(f"CELLLOOP_{name}: not an origin (scheme://host[:port]): {' '.join(bad)}")
    return origins


@dataclass
class Config:
    instance_dir: Path
    database_url: str
    storage_url: str
    secret_key: str
    token_max_age_s: int = 14 * 24 * 3600
    max_image_pixels: int = 8192 * 8192
    max_upload_bytes: int = 512 * 1024 * 1024
    secure_cookies: bool = False
    base_url: str = "http://127.0.0.1:8000"
    array_cache_mb: int = 512
    # origins allowed to frame crowd task pages (CSP frame-ancestors); empty: this server only
    frame_ancestors: tuple[str, ...] = ()
    # where a framed task page posts its "submitted" message; default: the first allowed frame ancestor
    parent_origin: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        instance_dir = Path(overrides.pop("instance_dir", None) or _env("INSTANCE_DIR", "cellloop-data")).resolve()
        values = dict(
            instance_dir=instance_dir,
            database_url=_env("DATABASE_URL") or f"sqlite:///{instance_dir / 'cellloop.sqlite'}",
            storage_url=_env("STORAGE_URL") or str(instance_dir / "storage"),
            token_max_age_s=int(_env("TOKEN_MAX_AGE_S", str(14 * 24 * 3600))),
            max_image_pixels=int(_env("MAX_IMAGE_PIXELS", str(8192 * 8192))),
            max_upload_bytes=int(_env("MAX_UPLOAD_BYTES", str(512 * 1024 * 1024))),
            secure_cookies=_env_bool("SECURE_COOKIES", False),
            base_url=_env("BASE_URL", "http://127.0.0.1:8000"),
            array_cache_mb=int(_env("ARRAY_CACHE_MB", "512")),
            frame_ancestors=_origins("FRAME_ANCESTORS"),
            parent_origin=(_origins("PARENT_ORIGIN") or (None,))[0],
        )
        values.update(overrides)
        if "secret_key" not in values:
            values["secret_key"] = _secret_key(instance_dir)
        return cls(**values)
