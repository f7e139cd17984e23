"""``creditsweep dashboard``: optuna-dashboard on the sweeps' database.

The storage is resolved as every other command resolves it (``--storage``, then
``$CREDITSWEEP_STORAGE``, the password from ``$CREDITSWEEP_STORAGE_PASSWORD_FILE``), so the
dashboard never needs the password on its command line.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from search.cli_common import UsageError


def add_dashboard_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the studies' database")
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL (default $CREDITSWEEP_STORAGE or sqlite:///creditsweep.db)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; 0.0.0.0 inside a container)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(handler=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
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
    Console(stderr=True).print(f"optuna-dashboard on {st.redact(url)} at "
                               f"http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0
