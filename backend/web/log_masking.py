"""Task links are bearer tokens in URLs: they must never reach a log file. Everything that logs a request
line (gunicorn's access log, Flask's "Exception on /api/task/..." error log, werkzeug's dev server) goes
through `mask_tokens`, which keeps the route and replaces the token."""
from __future__ import annotations

import logging
import re

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


class TokenMaskingGunicornLogger(GunicornLogger):
    """gunicorn's logger with task tokens masked in the access log's request line, path, query and referer."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = mask_tokens(atoms[key])
        return atoms

    def setup(self, cfg):
        super().setup(cfg)
        install_token_masking(self.error_log, self.access_log)
