"""`cnnsearch dashboard`: optuna-dashboard on a study storage, to watch studies live.

The storage is resolved like every other command's (``--storage``, ``$CNNSEARCH_STORAGE``, the
SQLite file in the working directory) and the artifact store is the one workers upload to, so
per-trial artifacts show in the dashboard. The server is optuna-dashboard's WSGI app
(:func:`optuna_dashboard.wsgi`) on the standard library's threaded WSGI server, as optuna-dashboard's
own CLI runs it when gunicorn is not installed; it listens on 127.0.0.1 unless ``--host`` says
otherwise, because the dashboard can edit and delete studies and has no login.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import warnings
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from search.cli.flags import Command, storage_arg, usage
from search.trial.errors import CnnSearchError

log = logging.getLogger(__name__)


def add_dashboard_args(p: argparse.ArgumentParser) -> Command:
    storage_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface, "
                        "and anyone who reaches it can edit and delete studies)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="artifact directory (default: DIR/NAME-artifacts next to a sqlite:///DIR/NAME.db file, "
                        "else $CNNSEARCH_ARTIFACTS, else ./cnnsearch-artifacts)")
    return cmd_dashboard


def cmd_dashboard(args: argparse.Namespace) -> int:
    from storage import mask_url, resolve_storage_url

    if not 0 <= args.port <= 65535:
        return usage(f"--port must be between 0 and 65535 (0: any free port), got {args.port}")
    url = resolve_storage_url(args.storage)
    # The dashboard's importance plot warns on every refresh of a young study; the console is for our lines.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.importance")
    server, n_studies = dashboard_server(url, args.host, args.port, args.artifacts)
    host, port = server.server_address[:2]
    print(f"dashboard: http://{host}:{port}/dashboard (storage: {mask_url(url)})", flush=True)
    print(f"{n_studies} {'study' if n_studies == 1 else 'studies'} in this storage"
          f"{' (new ones appear as `cnnsearch run` creates them)' if not n_studies else ''}; Ctrl-C stops it",
          flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
        signal.signal(signal.SIGTERM, previous)
    return 0


def dashboard_server(storage_url: str, host: str = "127.0.0.1", port: int = 8080,
                     artifacts: str | None = None) -> tuple[WSGIServer, int]:
    """optuna-dashboard for the storage at ``storage_url``, bound to ``host:port`` but not yet serving.

    Returns the server (call ``serve_forever``; ``server_address`` holds the port when ``port`` is
    0) and how many studies the storage holds. The dashboard shows the artifacts in ``artifacts``
    (default: :func:`storage.artifact_store_for`'s directory for the URL).

    Raises:
        StorageError: the storage cannot be opened (its URL masked in the message).
        CnnSearchError: nothing can listen on ``host:port`` (in use, not allowed, not an address here).
    """
    import optuna_dashboard

    from storage import artifact_store_for, open_storage

    # Heartbeats are for workers running trials; the dashboard only reads (and lets people tell).
    storage = open_storage(storage_url, heartbeat_interval=None, read_only=True)
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store_for(storage_url, artifacts))
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise CnnSearchError(_listen_error(host, port, exc)) from None
    return server, len(storage.get_all_studies())


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"--port {port}: port {port} on {host} is already in use (another dashboard?); "
                "choose a free one with --port, or --port 0 for any")
    if exc.errno == errno.EACCES:
        return f"--port {port}: not allowed to listen on {host}:{port}; ports below 1024 need root, use e.g. 8080"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host!r} is not an IPv4 address or name of this machine; use 127.0.0.1 or 0.0.0.0"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A browser keeps connections open: request threads must not keep Ctrl-C from ending the process.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        # The page polls the API every few seconds: one stderr line per request would drown the console.
        log.debug("%s %s", self.address_string(), format % args)


def _interrupt(signum: int, frame: object) -> None:
    # `docker compose stop` and systemd send SIGTERM: stop as cleanly as on Ctrl-C.
    raise KeyboardInterrupt

