"""``creditsweep dashboard``: optuna-dashboard on the studies' database.

The storage is resolved as every other command resolves it (``--storage``, then
``$CREDITSWEEP_STORAGE``, the password from ``$CREDITSWEEP_STORAGE_PASSWORD_FILE``), so the
dashboard never needs the password on its command line.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from catalogue.errors import EnvironmentProblem, UsageError
from search.cli.base import Command, add


def arguments(p: argparse.ArgumentParser) -> None:
    add(p, "--host", default="127.0.0.1",
        help="address to listen on (0.0.0.0 inside a container)")
    add(p, "--port", type=int, default=8080, help="port to listen on")


def run(args: argparse.Namespace) -> int:
    from search import storage as st

    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError("optuna-dashboard is not installed: pip install "
                         "'creditsweep[dashboard]'") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    url = st.storage_url(args.storage)
    storage = st.open_storage(url, create=False)  # a viewer never creates a database
    check_port(args.host, args.port)
    print(f"optuna-dashboard on {st.redact(url)} at http://{args.host}:{args.port}/ "
          "(Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as exc:  # taken between the check and the server's own bind
        raise listen_error(exc, args.host, args.port) from None
    return 0


def check_port(host: str, port: int) -> None:
    """Bind the address as the server will (reusing a closing one), so that a port in use is
    one line before the server prints its banner."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise listen_error(exc, host, port) from None


def listen_error(exc: OSError, host: str, port: int) -> Exception:
    """What a failed bind means, by its error number."""
    if isinstance(exc, socket.gaierror):
        return UsageError(f"--host {host!r} is not a known address: {exc.strerror}")
    if exc.errno == errno.EADDRINUSE:
        return EnvironmentProblem(f"port {port} on {host} is in use: stop what listens there, "
                                  "or give another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"--host {host!r} is not an address of this machine")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentProblem(f"port {port} on {host} needs privileges this user lacks: "
                                  "give a --port above 1023")
    return exc


COMMAND = Command("dashboard", "serve optuna-dashboard on the studies' database", arguments,
                  run, shared=("storage",))
