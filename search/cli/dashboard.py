"""``creditsweep dashboard``: optuna-dashboard on the studies' database.

The storage is resolved as every other command resolves it (``--storage``, then
``$CREDITSWEEP_STORAGE``, the password from ``$CREDITSWEEP_STORAGE_PASSWORD_FILE``), so the
dashboard never needs the password on its command line.
"""

from __future__ import annotations

import argparse
import sys

from catalogue.errors import UsageError
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
    storage = st.open_storage(url)
    print(f"optuna-dashboard on {st.redact(url)} at http://{args.host}:{args.port}/ "
          "(Ctrl-C stops it)", file=sys.stderr, flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


COMMAND = Command("dashboard", "serve optuna-dashboard on the studies' database", arguments,
                  run, shared=("storage",))
