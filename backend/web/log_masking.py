"""Task links are bearer tokens in URLs: they must never reach a log file. Everything that logs a request
line (gunicorn's access log, Flask's "Exception on /api/task/..." error log, werkzeug's dev server) goes
through `mask_tokens`, which keeps the route and replaces the token."""
from __future__ import annotations

import logging
import os
import re
import traceback

from gunicorn.glogging import Logger as GunicornLogger

MASK = "<token>"
# /task/<token> and /api/task/<token>/..., also percent-encoded or inside a full URL
_TOKEN_IN_PATH = re.compile(r"(/task/)[^/?#\s\"']+")


def mask_tokens(text: str) -> str:
    return _TOKEN_IN_PATH.sub(r"\1" + MASK, text)


class TokenMaskingFilter(logging.Filter):
    """Rewrites a record's message with tokens masked (the formatted message, so tokens in args are caught)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_tokens(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_tokens(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_tokens(record.exc_text)
        return True


def install_token_masking(*loggers: logging.Logger) -> None:
    """Mask tokens in these loggers' records and in every handler they write to (a filter on a handler also
    catches records that propagate from child loggers)."""
    token_filter = TokenMaskingFilter()
    for logger in loggers:
        if not any(isinstance(f, TokenMaskingFilter) for f in logger.filters):
            logger.addFilter(token_filter)
        for handler in logger.handlers:
            if not any(isinstance(f, TokenMaskingFilter) for f in handler.filters):
                handler.addFilter(token_filter)


_FORMAT_ATOM = re.compile(r"%\(([^)]*)\)")


class _LogAtoms(dict):
    """gunicorn's SafeAtoms, escaping only the atoms the format reads ('-' for a missing one)."""

    def __getitem__(self, key):
        value = self.get(key.lower() if key.startswith("{") else key, "-")
        return value.replace('"', '\\"') if isinstance(value, str) else value


class TokenMaskingGunicornLogger(GunicornLogger):
    """gunicorn's logger with task tokens masked in the access log's request line, path, query and referer.

    An access line is formatted once, from the atoms its format names: gunicorn's own path builds every request
    header, response header and environ variable into atoms, copies them, and formats the line again in each
    filter, which costs a crowd edit more than its SQL."""

    def atoms(self, resp, req, environ, request_time):
        if getattr(self, "_plain_format", False):
            atoms = self._plain_atoms(resp, environ, request_time)
        else:
            atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = mask_tokens(atoms[key])
        return atoms

    def _plain_atoms(self, resp, environ, request_time) -> dict:
        """The atoms without headers and environ variables (the format names none), as gunicorn computes them."""
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        seconds, micros = request_time.seconds, request_time.microseconds
        return {
            "h": environ.get("REMOTE_ADDR", "-"), "l": "-", "u": self._get_user(environ) or "-", "t": self.now(),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status, "m": environ.get("REQUEST_METHOD"), "U": environ.get("PATH_INFO"),
            "q": environ.get("QUERY_STRING"), "H": environ.get("SERVER_PROTOCOL"),
            "b": str(sent) if sent is not None else "-", "B": sent, "f": environ.get("HTTP_REFERER", "-"),
            "a": environ.get("HTTP_USER_AGENT", "-"), "T": seconds, "D": seconds * 1000000 + micros,
            "M": seconds * 1000 + int(micros / 1000), "L": "%d.%06d" % (seconds, micros), "p": f"<{os.getpid()}>",
        }

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        try:
            line = self._access_format % _LogAtoms(self.atoms(resp, req, environ, request_time))
            # already formatted (and masked): the record carries no arguments to format again
            self.access_log.info(line)
        except Exception:
            self.error(traceback.format_exc())

    def setup(self, cfg):
        super().setup(cfg)
        self._access_format = cfg.access_log_format
        self._plain_format = not any(key.startswith("{") for key in _FORMAT_ATOM.findall(self._access_format))
        install_token_masking(self.error_log, self.access_log)
