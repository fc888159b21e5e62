"""Serve the app over real HTTP on loopback from a background thread: for the simulated annotator in tests and
benchmarks (production serves with gunicorn, `cellloop serve`)."""
from __future__ import annotations

import threading
from contextlib import contextmanager


@contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Yields the base URL of ``app`` served on a free port until the block ends."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):  # one line per request would drown a simulation's output
            pass

    server = make_server(host, 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="cellloop-local-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
