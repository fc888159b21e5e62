"""Crowd task links: a signed token names one task and that task's current nonce, and expires. A pure function of
the secret, so the CLI signs links without building the web app, and any host sharing the secret reads them."""
from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

TOKEN_SALT = "cellloop.task"


class UnknownLink(Exception):
    """Not a token this deployment issued (or not one for a task)."""


class ExpiredLink(Exception):
    """A token we issued whose lifetime is over: its owner may ask for a new link."""


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=TOKEN_SALT)


def sign_task_token(secret: str, task_id: int, nonce: int, worker: str | None = None) -> str:
    payload = {"t": int(task_id), "n": int(nonce)}
    if worker:
        payload["w"] = worker
    return _serializer(secret).dumps(payload)


def read_task_token(secret: str, token: str, max_age_s: int) -> dict:
    """The token's payload; UnknownLink or ExpiredLink otherwise."""
    try:
        payload = _serializer(secret).loads(token, max_age=max_age_s)
    except SignatureExpired:
        raise ExpiredLink("this task link has expired") from None
    except BadSignature:
        raise UnknownLink("unknown task link") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("t"), int):
        raise UnknownLink("unknown task link")
    return payload
