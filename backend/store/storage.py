"""Bytes by key: one small interface over a local folder or any S3-compatible bucket.

Keys are '/'-separated relative paths ("projects/3/images/12.npy.gz"). Every key is validated
before it touches a backend, so a key taken from a request can never escape the storage root.

Writes are atomic on both backends: a reader sees the old object or the new one, never a torn mix.
`LocalStorage` gets this from write-to-temp + fsync + `os.replace`; on S3 a single PutObject is
atomic by nature (the object appears only once the whole body has been received).
"""
from __future__ import annotations

import abc
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "StorageError",
    "InvalidKey",
    "NotFound",
    "Storage",
    "LocalStorage",
    "S3Storage",
    "validate_key",
    "validate_prefix",
    "storage_from_url",
]

MAX_KEY_LENGTH = 1024

# Control characters (C0, DEL, C1) make keys that print misleadingly in logs and that some
# filesystems and S3 tools mishandle.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Temp files of LocalStorage end with this; keys may not, so list() can hide them safely.
_TMP_SUFFIX = ".cellloop-tmp"


class StorageError(Exception):
    """Any failure of the storage layer."""


class InvalidKey(StorageError, ValueError):
    """The key is not a safe relative '/'-separated path."""


class NotFound(StorageError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError's str() adds quotes around the message
        return str(self.args[0]) if self.args else "not found"


def _check_segments(text: str, what: str, *, allow_trailing_slash: bool) -> None:
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidKey(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if "\\" in text:
        raise InvalidKey(f"{what} {text!r} contains a backslash; use '/' to separate parts")
    if _CONTROL.search(text):
        raise InvalidKey(f"{what} {text!r} contains a control character")
    if text.startswith("/"):
        raise InvalidKey(f"{what} {text!r} is absolute; keys are relative")
    body = text[:-1] if allow_trailing_slash and text.endswith("/") else text
    for segment in body.split("/"):
        if segment == "":
            raise InvalidKey(f"{what} {text!r} has an empty path segment")
        if segment in (".", ".."):
            raise InvalidKey(f"{what} {text!r} has a '{segment}' segment")


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise InvalidKey."""
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, not {type(key).__name__}")
    if key == "":
        raise InvalidKey("key is empty")
    _check_segments(key, "key", allow_trailing_slash=False)
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but '' and a trailing '/' are allowed (a listing prefix)."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    _check_segments(prefix, "prefix", allow_trailing_slash=True)
    return prefix


class Storage(abc.ABC):
    """Bytes by key. Implementations validate every key with `validate_key`."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound if there is none."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically, replacing any previous object."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with `prefix` (a plain string prefix, as in S3)."""


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, not {type(data).__name__}")


class LocalStorage(Storage):
    """Objects as files under `root`; the key is the relative path.

    Empty directories left behind by delete() are kept: removing them could race with a
    concurrent put() into the same directory, and list() never reports directories.
    """

    def __init__(self, root) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage root {self.root}: {exc}") from exc
        if not self.root.is_dir():
            raise StorageError(f"storage root {self.root} is not a directory")

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.endswith(_TMP_SUFFIX):
            raise InvalidKey(f"key {key!r} ends with {_TMP_SUFFIX!r}, reserved for temp files")
        path = self.root / key
        # A symlink placed inside the root could still point outside it; refuse to follow it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"key {key!r} resolves outside the storage root")
        return path

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object under key {key!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        data = _as_bytes(data)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target so os.replace is a rename within one filesystem.
            tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except IsADirectoryError:
            # A "directory" is only a prefix of other keys, not an object.
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix fully names.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / directory if directory else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = rel_dir + name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3Storage(Storage):
    """Objects in an S3 bucket (AWS, MinIO, Ceph, moto...) under an optional key prefix.

    put() is a single PutObject, which S3 applies atomically: readers see the previous object
    until the new one is complete, so no temp-object dance is needed.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region_name: str | None = None,
        create_bucket: bool = False,
        client=None,
        page_size: int = 1000,
        direct: bool = False,
    ) -> None:
        if not bucket or not isinstance(bucket, str):
            raise ValueError("bucket name is required")
        if not 1 <= int(page_size) <= 1000:
            raise ValueError("page_size must be between 1 and 1000 (S3's maximum)")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.page_size = int(page_size)
        self._direct = None
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            session = boto3.session.Session(region_name=region_name)
            # an unreachable endpoint fails within seconds instead of retrying for minutes
            client = session.client("s3", endpoint_url=endpoint_url,
                                    config=BotoConfig(connect_timeout=5, read_timeout=60,
                                                      retries={"max_attempts": 3, "mode": "standard"}))
            credentials = session.get_credentials()
            if direct and endpoint_url and credentials is not None:
                self._direct = _SignedObjectRequests(endpoint_url, client.meta.region_name or "us-east-1", bucket,
                                                     credentials)
        self.client = client
        if create_bucket:
            self._create_bucket(region_name)

    def __repr__(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={endpoint!r})"

    def _create_bucket(self, region_name: str | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        region = region_name or self.client.meta.region_name
        kwargs = {"Bucket": self.bucket}
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot create bucket {self.bucket!r}: {exc}") from exc

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        if self._direct is not None:
            return self._direct.request("GET", full, key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no object under key {key!r}") from None
            raise StorageError(f"cannot read {key!r} from s3://{self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {key!r} from s3://{self.bucket}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        data = _as_bytes(data)
        if self._direct is not None:
            self._direct.request("PUT", full, key, data)
            return
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot write {key!r} to s3://{self.bucket}: {exc}") from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        if self._direct is not None:
            self._direct.request("DELETE", full, key)  # a missing key is no error (S3 answers 204 either way)
            return
        try:
            # DeleteObject succeeds for a missing key, which is the contract we want.
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot delete {key!r} from s3://{self.bucket}: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
            return True
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot check {key!r} in s3://{self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot check {key!r} in s3://{self.bucket}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        validate_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        try:
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    keys.append(item["Key"][len(self.prefix):])
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list s3://{self.bucket}/{self.prefix}{prefix}: {exc}") from exc
        keys.sort()
        return keys


class _SignedObjectRequests:
    """GetObject, PutObject and DeleteObject as plain HTTP requests signed with AWS Signature V4, for a bucket behind an
    explicit endpoint (MinIO, Ceph, moto...; path-style URLs, which they all serve). These three are what every edit and
    every task read does; through botocore each costs milliseconds of CPU in its event hooks, request models and
    response parsing, several times the request itself. Credentials and region come from the same boto3 session as
    the client, which does everything else (listing, HEAD, bucket creation). Timeouts and retries match the client's
    (5 s to connect, 60 s to read, 3 attempts on a connection error or a 5xx). Opt-in (``direct=1``): its signatures
    equal botocore's byte for byte in the tests, but the loopback S3 server (moto) checks no signatures, so it has
    not been proven against a server that does; boto3 stays the default path."""

    _ALGORITHM = "AWS4-HMAC-SHA256"
    _EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

    def __init__(self, endpoint_url: str, region: str, bucket: str, credentials) -> None:
        import urllib3

        parts = urlsplit(endpoint_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        # the Host header as the HTTP client sends it: without the scheme's default port
        default = {"http": ":80", "https": ":443"}.get(parts.scheme)
        self.host = parts.netloc[:-len(default)] if default and parts.netloc.endswith(default) else parts.netloc
        self.path = f"{parts.path.rstrip('/')}/{quote(bucket, safe='')}/"
        self.region = region
        self.bucket = bucket
        self.credentials = credentials
        retries = urllib3.Retry(total=2, connect=2, read=2, status=2, backoff_factor=0.1,
                                status_forcelist=(500, 502, 503, 504), allowed_methods=("GET", "PUT", "DELETE"),
                                raise_on_status=False)
        self.pool = urllib3.PoolManager(num_pools=4, maxsize=16, retries=retries,
                                        timeout=urllib3.Timeout(connect=5, read=60))
        self._keys: dict[tuple, bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._keys.get((secret, day))
        if cached is None:
            key = ("AWS4" + secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # one day's key at a time
            cached = key
        return cached

    def headers(self, method: str, path: str, body: bytes | None, now: float | None = None) -> dict[str, str]:
        creds = self.credentials.get_frozen_credentials()  # refreshed by botocore when they are temporary
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        payload = hashlib.sha256(body).hexdigest() if body else self._EMPTY_SHA256
        headers = {"host": self.host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        canonical = "\n".join([method, path, "", *(f"{n}:{headers[n]}" for n in names), "", ";".join(names), payload])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join([self._ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"{self._ALGORITHM} Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        del headers["host"]  # urllib3 sends it (the same value)
        return headers

    def request(self, method: str, full_key: str, key: str, body: bytes | None = None) -> bytes:
        import urllib3

        path = self.path + quote(full_key, safe="/-_.~")
        where = f"s3://{self.bucket}"
        try:
            resp = self.pool.request(method, self.origin + path, body=body, headers=self.headers(method, path, body),
                                     preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            verb = "read" if method == "GET" else "write" if method == "PUT" else "delete"
            raise StorageError(f"cannot {verb} {key!r} {'from' if method == 'GET' else 'in'} {where}: {exc}") from exc
        if 200 <= resp.status < 300:
            return resp.data
        code = _xml_code(resp.data)
        if method == "GET" and resp.status == 404 and code == "NoSuchKey":
            raise NotFound(f"no object under key {key!r}")
        if method == "DELETE" and resp.status == 404 and code == "NoSuchKey":
            return b""
        raise StorageError(f"cannot {method} {key!r} in {where}: HTTP {resp.status} {code or ''}".rstrip())


def _xml_code(body: bytes) -> str:
    match = re.search(rb"<Code>([^<]{1,100})</Code>", body or b"")
    return match.group(1).decode(errors="replace") if match else ""


class WriteLog(Storage):
    """A storage that remembers the keys it wrote, so an operation that writes many objects and then fails
    (an ingest whose database rows never commit) can take every one of them back."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.written: list[str] = []

    def __repr__(self) -> str:
        return repr(self.inner)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.written.append(key)  # before the write: a put that fails half way is still taken back
        self.inner.put(key, data)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def take_back(self) -> None:
        for key in reversed(self.written):
            self.inner.delete(key)
        self.written.clear()


def _error_code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_S3_QUERY_KEYS = {"endpoint_url", "region", "region_name", "create_bucket", "page_size", "direct"}


def storage_from_url(url: str) -> Storage:
    """Build a Storage from a URL-like setting.

    "/abs/path", "relative/path" or "file:///abs/path" -> LocalStorage;
    "s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1" -> S3Storage
    (also `create_bucket=1`, `page_size=N`, and `direct=1` to send object get/put/delete as plain SigV4 requests
    instead of through botocore: opt-in, see ``_SignedObjectRequests``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("storage URL is empty")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "":
        return LocalStorage(url)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names host {parts.netloc!r}; only local paths work")
        if parts.query:
            raise ValueError(f"file URL {url!r} takes no query parameters")
        return LocalStorage(unquote(parts.path))
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise ValueError(f"s3 URL {url!r} names no bucket")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = set(query) - _S3_QUERY_KEYS
        if unknown:
            raise ValueError(
                f"s3 URL {url!r}: unknown parameter(s) {sorted(unknown)}; known: {sorted(_S3_QUERY_KEYS)}"
            )
        one = {name: values[-1] for name, values in query.items()}
        create = one.get("create_bucket", "").lower() in ("1", "true", "yes", "on")
        kwargs = {}
        if "page_size" in one:
            kwargs["page_size"] = int(one["page_size"])
        if "direct" in one:  # direct=1: object get/put/delete as our own signed requests instead of botocore's
            kwargs["direct"] = one["direct"].lower() in ("1", "true", "yes", "on")
        return S3Storage(
            bucket,
            prefix=unquote(parts.path).strip("/"),
            endpoint_url=one.get("endpoint_url") or None,
            region_name=one.get("region") or one.get("region_name") or None,
            create_bucket=create,
            **kwargs,
        )
    raise ValueError(f"unsupported storage URL scheme {parts.scheme!r} in {url!r} (use a path, file:// or s3://)")
