"""The ``creditsweep`` command: one entry point, one sub-command module per area."""

from __future__ import annotations

import argparse
import sys

from search.cli_common import StorageUnavailable, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"creditsweep: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from search.cli_dashboard import add_dashboard_parser
    from search.cli_sweep import add_sweep_parsers
    from search.cli_train import add_train_parser
    from search.cli_transfer import add_transfer_parsers

    parser = _Parser(prog="creditsweep", description=(
        "Hyperparameter search for credit-assignment rules without weight symmetry."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_train_parser(sub)
    add_sweep_parsers(sub)
    add_transfer_parsers(sub)
    add_dashboard_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (UsageError, ValueError) as exc:
        print(f"creditsweep: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"creditsweep: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("creditsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
