"""Shared fixtures: a real S3 API (moto's server over HTTP on loopback) and the sample data folder."""
from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import pytest

# Production predicts on an exported runtime (pipeline.model.runtime.DEFAULT_RUNTIME), exporting each model version
# once (8-14 s). The suite trains dozens of throwaway versions, so it predicts on Keras unless told otherwise; the
# runtime tests compare every runtime's labels with Keras', and the end-to-end loop test runs on the default.
os.environ.setdefault("CELLLOOP_INFERENCE_RUNTIME", "keras")

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI checks shared/ out next to the repository, not inside it.
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Keep boto3 away from the developer's real ~/.aws config and credentials.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only sample data folder. A developer checkout without it skips the test; under CI=true a
    missing folder fails it, so a broken checkout can never pass by skipping."""
    if not SHARED_DATA.is_dir():
        message = f"sample data not found at {SHARED_DATA} (shared/ is checked out next to the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def aws_test_env():
    """Dummy AWS credentials for the whole session, restored afterwards."""
    saved = {name: os.environ.get(name) for name in _FAKE_AWS_ENV}
    os.environ.update(_FAKE_AWS_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(aws_test_env) -> str:
    """Endpoint URL of a moto S3 server on 127.0.0.1, shared by the session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


_bucket_numbers = itertools.count()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket name on the session's S3 server (created by whoever uses it)."""
    return f"cellloop-test-{os.getpid()}-{next(_bucket_numbers)}"


@pytest.fixture
def s3_storage(s3_server, s3_bucket):
    """An S3Storage on a fresh bucket of the moto server."""
    from backend.store.storage import S3Storage

    return S3Storage(s3_bucket, endpoint_url=s3_server, region_name="us-east-1", create_bucket=True)
