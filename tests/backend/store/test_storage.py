import calendar
import os
import time
import threading

import boto3
import pytest

from backend.store.storage import (
    InvalidKey,
    LocalStorage,
    NotFound,
    S3Storage,
    StorageError,
    storage_from_url,
    validate_key,
    validate_prefix,
)

BAD_KEYS = [
    "",
    "../x",
    "a/../../x",
    "..",
    "/etc/passwd",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_rejects_unsafe_keys(key):
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "a/b/c.npy.gz", "projects/1/images/12.npy", "x" * 1024, "sp ace/ü.tif", "..a/b.."])
def test_validate_key_accepts_ordinary_keys(key):
    assert validate_key(key) == key


def test_validate_key_rejects_non_strings():
    with pytest.raises(InvalidKey):
        validate_key(b"a")


def test_invalid_key_is_a_value_error_and_not_found_a_key_error():
    assert issubclass(InvalidKey, ValueError) and issubclass(InvalidKey, StorageError)
    assert issubclass(NotFound, KeyError) and issubclass(NotFound, StorageError)


def test_validate_prefix_allows_empty_and_trailing_slash_only():
    assert validate_prefix("") == ""
    assert validate_prefix("a/b/") == "a/b/"
    for bad in ("../", "/a", "a//", "a\\"):
        with pytest.raises(InvalidKey):
            validate_prefix(bad)


# ---- behaviour shared by both backends -------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3_storage")


def test_round_trip_overwrite_and_delete(storage):
    storage.put("a/b/c.bin", b"\x00\x01binary\xff")
    assert storage.get("a/b/c.bin") == b"\x00\x01binary\xff"
    assert storage.exists("a/b/c.bin")
    storage.put("a/b/c.bin", b"second")
    assert storage.get("a/b/c.bin") == b"second"
    storage.delete("a/b/c.bin")
    assert not storage.exists("a/b/c.bin")
    with pytest.raises(NotFound):
        storage.get("a/b/c.bin")


def test_empty_object_is_an_object(storage):
    storage.put("empty", b"")
    assert storage.exists("empty")
    assert storage.get("empty") == b""
    assert storage.list() == ["empty"]


def test_get_missing_raises_not_found_and_delete_missing_is_fine(storage):
    with pytest.raises(NotFound):
        storage.get("nope/never")
    with pytest.raises(KeyError):
        storage.get("nope")
    storage.delete("nope/never")
    assert not storage.exists("nope")


def test_list_is_sorted_and_filters_by_string_prefix(storage):
    keys = ["b/2", "a/1", "a/10", "ab", "a/sub/x", "c"]
    for key in keys:
        storage.put(key, key.encode())
    assert storage.list() == sorted(keys)
    assert storage.list("a/") == ["a/1", "a/10", "a/sub/x"]
    assert storage.list("a") == ["a/1", "a/10", "a/sub/x", "ab"]
    assert storage.list("a/1") == ["a/1", "a/10"]
    assert storage.list("zzz") == []
    assert storage.list("zzz/") == []


def test_directory_like_prefix_is_not_an_object(storage):
    storage.put("dir/file", b"x")
    assert not storage.exists("dir")
    with pytest.raises(NotFound):
        storage.get("dir")
    storage.delete("dir")
    assert storage.get("dir/file") == b"x"


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a//b", "a\\b"])
def test_every_operation_validates_keys(storage, key):
    for call in (
        lambda: storage.get(key),
        lambda: storage.put(key, b"x"),
        lambda: storage.delete(key),
        lambda: storage.exists(key),
    ):
        with pytest.raises(InvalidKey):
            call()
    with pytest.raises(InvalidKey):
        storage.list("../")


def test_put_requires_bytes(storage):
    with pytest.raises(TypeError):
        storage.put("k", "text is not bytes")
    storage.put("k", bytearray(b"ok"))
    assert storage.get("k") == b"ok"


# ---- LocalStorage specifics --------------------------------------------------------------------


def test_local_storage_creates_root_and_stays_inside_it(tmp_path):
    root = tmp_path / "deep" / "root"
    store = LocalStorage(root)
    assert root.is_dir()
    store.put("x/y", b"1")
    assert (root / "x" / "y").read_bytes() == b"1"
    with pytest.raises(InvalidKey):
        store.put("../outside", b"no")
    assert not (tmp_path / "deep" / "outside").exists()


def test_local_storage_refuses_symlinks_out_of_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = LocalStorage(tmp_path / "root")
    os.symlink(outside, tmp_path / "root" / "link")
    with pytest.raises(InvalidKey):
        store.get("link/secret")
    with pytest.raises(InvalidKey):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()


def test_local_failed_write_keeps_old_object_and_leaves_no_temp_files(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path)
    store.put("obj", b"old contents")
    real_write = os.write
    calls = []

    def disk_full(fd, data):
        calls.append(fd)
        real_write(fd, bytes(data[:3]))  # part of the new contents reaches the temp file first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        store.put("obj", b"new contents that never fully land")
    monkeypatch.undo()
    assert len(calls) == 1
    assert store.get("obj") == b"old contents"
    assert store.list() == ["obj"]
    assert os.listdir(tmp_path) == ["obj"]


def test_local_temp_files_are_invisible_to_list_and_reserved(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("a/real", b"1")
    # What a crashed writer would leave behind.
    (tmp_path / "a" / ".real.0123abcd.cellloop-tmp").write_bytes(b"partial")
    assert store.list() == ["a/real"]
    assert store.list("a/") == ["a/real"]
    with pytest.raises(InvalidKey):
        store.put("a/x.cellloop-tmp", b"x")


def test_local_concurrent_writers_never_expose_a_torn_object(tmp_path):
    store = LocalStorage(tmp_path)
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    store.put("hot", payloads[0])
    stop = threading.Event()
    seen_bad = []

    def writer(payload):
        while not stop.is_set():
            store.put("hot", payload)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            data = store.get("hot")
            if data not in payloads:
                seen_bad.append(len(data))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen_bad == []
    assert store.list() == ["hot"]


def test_local_put_into_a_path_that_is_a_file_is_a_storage_error(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("a", b"file")
    with pytest.raises(StorageError):
        store.put("a/b", b"under a file")
    assert store.get("a") == b"file"


# ---- S3Storage specifics -----------------------------------------------------------------------


def test_s3_list_paginates(s3_server, s3_bucket):
    store = S3Storage(s3_bucket, endpoint_url=s3_server, region_name="us-east-1", create_bucket=True, page_size=3)
    keys = [f"k/{i:02d}" for i in range(11)] + ["other"]
    for key in reversed(keys):
        store.put(key, key.encode())

    requests = []
    store.client.meta.events.register("before-parameter-build.s3.ListObjectsV2", lambda params, **kw: requests.append(dict(params)))
    assert store.list("k/") == keys[:11]
    # 11 keys in pages of 3: four requests prove the continuation tokens were followed.
    assert len(requests) == 4
    assert all(r["MaxKeys"] == 3 for r in requests)
    assert store.list() == sorted(keys)


def test_s3_prefix_isolates_and_is_stripped_from_keys(s3_server, s3_bucket):
    a = S3Storage(s3_bucket, prefix="tenant-a", endpoint_url=s3_server, region_name="us-east-1", create_bucket=True)
    b = S3Storage(s3_bucket, prefix="/tenant-b/", endpoint_url=s3_server, region_name="us-east-1")
    a.put("x/1", b"a")
    b.put("x/1", b"b")
    assert a.get("x/1") == b"a" and b.get("x/1") == b"b"
    assert a.list() == ["x/1"] and b.list() == ["x/1"]
    raw = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    stored = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert stored == ["tenant-a/x/1", "tenant-b/x/1"]
    b.delete("x/1")
    assert a.exists("x/1") and not b.exists("x/1")


def test_s3_create_bucket_is_idempotent_and_missing_bucket_is_a_storage_error(s3_server, s3_bucket):
    S3Storage(s3_bucket, endpoint_url=s3_server, region_name="us-east-1", create_bucket=True)
    again = S3Storage(s3_bucket, endpoint_url=s3_server, region_name="us-east-1", create_bucket=True)
    again.put("k", b"v")
    missing = S3Storage(s3_bucket + "-absent", endpoint_url=s3_server, region_name="us-east-1")
    with pytest.raises(StorageError) as info:
        missing.get("k")
    assert not isinstance(info.value, NotFound)
    with pytest.raises(StorageError):
        missing.put("k", b"v")


def test_s3_objects_go_by_signed_requests_that_s3_and_boto3_agree_on(s3_server, s3_bucket):
    """With direct=1, get/put/delete skip botocore (plain SigV4 requests, the hot path of every edit and read): any
    valid key round-trips, boto3 reads what they wrote under the same key, a missing key is NotFound, and the
    signature equals botocore's own signer's."""
    store = storage_from_url(f"s3://{s3_bucket}/p%20q?endpoint_url={s3_server}&region=eu-west-1&create_bucket=1"
                             f"&direct=1")
    assert store._direct is not None
    off = storage_from_url(f"s3://{s3_bucket}/p%20q?endpoint_url={s3_server}&region=eu-west-1")
    assert off._direct is None  # boto3 is the default path
    key = "a b/é+%&=?#;,~!*'()[]@$/x.npy.gz"
    store.put(key, b"\x00payload")
    assert store.get(key) == b"\x00payload"
    raw = boto3.client("s3", endpoint_url=s3_server, region_name="eu-west-1")
    assert raw.get_object(Bucket=s3_bucket, Key="p q/" + key)["Body"].read() == b"\x00payload"
    assert store.list() == [key]
    assert off.get(key) == b"\x00payload"  # through botocore: the same object
    store.delete(key)
    store.delete(key)  # a missing key is fine to delete
    with pytest.raises(NotFound):
        store.get(key)

    # moto does not check signatures: the signature itself is checked against botocore's own S3 signer
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = store._direct
    signer.credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    path = signer.path + "p%20q/a%20b/x"
    for method, body in (("GET", None), ("PUT", b"some bytes")):
        request = AWSRequest(method=method, url=signer.origin + path, data=body or b"")
        S3SigV4Auth(signer.credentials, "s3", "eu-west-1").add_auth(request)
        stamp = request.headers["X-Amz-Date"]
        ours = signer.headers(method, path, body, now=calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
        assert ours["authorization"] == request.headers["Authorization"]
        assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


def test_s3_create_bucket_outside_us_east_1(s3_server, s3_bucket):
    store = S3Storage(s3_bucket, endpoint_url=s3_server, region_name="eu-west-1", create_bucket=True)
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_s3_unreachable_endpoint_is_a_storage_error(aws_test_env):
    from botocore.config import Config

    with socket_closed_port() as port:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
        )
        store = S3Storage("bucket", client=client)
        with pytest.raises(StorageError):
            store.get("k")


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


# ---- storage_from_url ----------------------------------------------------------------------------


def test_storage_from_url_local_paths(tmp_path):
    plain = storage_from_url(str(tmp_path / "p"))
    assert isinstance(plain, LocalStorage) and plain.root == (tmp_path / "p").resolve()
    file_url = storage_from_url(f"file://{tmp_path}/f%20g")
    assert isinstance(file_url, LocalStorage) and file_url.root == (tmp_path / "f g").resolve()
    file_url.put("k", b"v")
    assert (tmp_path / "f g" / "k").read_bytes() == b"v"


def test_storage_from_url_s3(s3_server, s3_bucket):
    store = storage_from_url(
        f"s3://{s3_bucket}/some/prefix?endpoint_url={s3_server}&region=us-east-1&create_bucket=1&page_size=2"
    )
    assert isinstance(store, S3Storage)
    assert store.prefix == "some/prefix/" and store.page_size == 2
    store.put("k", b"v")
    raw = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    assert raw.get_object(Bucket=s3_bucket, Key="some/prefix/k")["Body"].read() == b"v"


@pytest.mark.parametrize(
    "url",
    ["", "ftp://host/x", "s3:///prefix", "file://otherhost/x", "s3://bucket?bogus=1", "s3://bucket/../up"],
)
def test_storage_from_url_rejects_bad_urls(url, aws_test_env):
    with pytest.raises(ValueError):
        storage_from_url(url)
