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


class ConfigError(ValueError):
    """A setting the server cannot start with (the CLI prints it as one line and exits 2)."""


MIN_SECRET_KEY_CHARS = 24


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None or not value.strip():
        return default
    value = value.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"CELLLOOP_{name} must be true or false, got {value!r}")


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    value = _env(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"CELLLOOP_{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"CELLLOOP_{name} must be at least {minimum}, got {number}")
    return number


def _env_float(name: str) -> float | None:
    """A positive number of seconds or a share of a core; None when unset."""
    value = _env(name)
    if value is None or not value.strip():
        return None
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"CELLLOOP_{name} must be a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"CELLLOOP_{name} must be a positive number, got {value!r}")
    return number


def check_secret_key(key: str | None, source: str) -> str:
    if not key or len(key.strip()) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(f"the secret key from {source} is missing, empty or shorter than {MIN_SECRET_KEY_CHARS} "
                          f"characters: it signs every session and task link, so a guessable one hands them out "
                          f"(set CELLLOOP_SECRET_KEY to a long random string)")
    return key.strip()


def _secret_key(instance_dir: Path) -> str:
    """An explicit key wins; otherwise one is generated once and kept beside the data, so sessions and
    task tokens survive restarts and are shared by every gunicorn worker."""
    explicit = _env("SECRET_KEY")
    if explicit is not None:
        return check_secret_key(explicit, "CELLLOOP_SECRET_KEY")
    path = instance_dir / "secret_key"
    if not path.exists():
        _create_secret_key(path)
    return check_secret_key(path.read_text(), str(path))


def _create_secret_key(path: Path) -> None:
    """Write a fresh key to a private temporary file, then link it into place: a reader never sees a half-written
    key, and of two workers starting at once the first link wins and the other reads that one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _private_instance_dir(instance_dir: Path) -> None:
    """The instance folder holds the secret key and the SQLite file: nobody else on the host may read them."""
    instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _private_sqlite_file(database_url: str) -> None:
    """Create the SQLite file owner-only before SQLite does (its -wal/-shm files inherit the mode)."""
    if not database_url.startswith("sqlite:///") or database_url.startswith("sqlite:///:memory:"):
        return
    path = Path(database_url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)


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
    session_lifetime_s: int = 12 * 3600
    proxy_hops: int = 0
    ratelimit_enabled: bool = True
    ratelimit_storage_url: str = "memory://"
    ratelimit_key_prefix: str = "cellloop"
    ratelimit_link_writes: str = "20 per second; 1200 per minute"
    ratelimit_login_ip: str = "20 per minute; 100 per hour; 500 per day"
    ratelimit_login_user: str = "5 per minute; 20 per hour; 50 per day"
    # image and labels reads per crowd link (and per reviewer): an editor reads each once per open or reload
    ratelimit_link_reads: str = "30 per second; 1800 per minute"
    # chunk reads per crowd link (and per reviewer): opening an 8192² task reads up to ~520 chunks of 512 px
    ratelimit_link_chunk_reads: str = "400 per second; 6000 per minute"
    # each crowd link's CPU budget (backend.web.cpu_budget): a bucket of this many CPU-seconds, refilled at
    # link_cpu_share CPU-seconds per second, so no link holds more than that share of a core for long
    link_cpu_burst_s: float = 5.0
    link_cpu_share: float = 0.5
    # patches up to this many bytes are kept in their revision's row instead of storage (0: always storage): on S3
    # an edit then costs one row and no request to the bucket
    patch_in_row_bytes: int = 0
    # origins allowed to frame crowd task pages (CSP frame-ancestors); empty: this server only
    frame_ancestors: tuple[str, ...] = ()
    # where a framed task page posts its "submitted" message; default: the first allowed frame ancestor
    parent_origin: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_secret_key(self.secret_key, "the configuration")
        if not (self.link_cpu_burst_s > 0 and self.link_cpu_share > 0):
            raise ConfigError("the link CPU budget (burst seconds and share of a core) must be positive")

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        instance_dir = Path(overrides.pop("instance_dir", None) or _env("INSTANCE_DIR", "cellloop-data")).resolve()
        _private_instance_dir(instance_dir)
        base_url = _env("BASE_URL", "http://127.0.0.1:8000")
        values = dict(
            instance_dir=instance_dir,
            database_url=_env("DATABASE_URL") or f"sqlite:///{instance_dir / 'cellloop.sqlite'}",
            storage_url=_env("STORAGE_URL") or str(instance_dir / "storage"),
            token_max_age_s=_env_int("TOKEN_MAX_AGE_S", 14 * 24 * 3600, minimum=1),
            max_image_pixels=_env_int("MAX_IMAGE_PIXELS", 8192 * 8192, minimum=1),
            max_upload_bytes=_env_int("MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1),
            # behind HTTPS a session cookie must never travel in clear text
            secure_cookies=_env_bool("SECURE_COOKIES", base_url.lower().startswith("https://")),
            base_url=base_url,
            array_cache_mb=_env_int("ARRAY_CACHE_MB", 512),
            patch_in_row_bytes=_env_int("PATCH_IN_ROW_BYTES", 0),
            session_lifetime_s=_env_int("SESSION_LIFETIME_S", 12 * 3600, minimum=60),
            proxy_hops=_env_int("PROXY_HOPS", 0),
            ratelimit_enabled=_env_bool("RATELIMIT_ENABLED", True),
            ratelimit_storage_url=_env("RATELIMIT_STORAGE_URL") or "memory://",
            ratelimit_key_prefix=_env("RATELIMIT_KEY_PREFIX") or "cellloop",
            frame_ancestors=_origins("FRAME_ANCESTORS"),
            parent_origin=(_origins("PARENT_ORIGIN") or (None,))[0],
        )
        for name in ("link_cpu_burst_s", "link_cpu_share"):
            value = _env_float(name.upper())
            if value is not None:
                values[name] = value
        for name in ("link_writes", "link_reads", "link_chunk_reads", "login_ip", "login_user"):
            value = _env(f"RATELIMIT_{name.upper()}")
            if value:
                values[f"ratelimit_{name}"] = _check_limit(f"CELLLOOP_RATELIMIT_{name.upper()}", value)
        values.update(overrides)
        _private_sqlite_file(values["database_url"])
        if "secret_key" not in values:
            values["secret_key"] = _secret_key(instance_dir)
        return cls(**values)


def _check_limit(name: str, value: str) -> str:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is not a rate limit like '5 per minute; 20 per hour': {exc}") from None
    return value
