"""CellLoop's annotation server."""


def create_app(*args, **kwargs):
    # imported lazily so `backend.edits` and friends stay usable without Flask machinery loaded
    from backend.web.app import create_app as _create_app

    return _create_app(*args, **kwargs)
