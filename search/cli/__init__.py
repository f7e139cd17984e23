"""The ``creditsweep`` command: one table of commands, one error policy.

Each command is a small unit (``search.cli.base.Command``): its arguments and its run. The
flags several commands share come from parent parsers, so they are declared once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from catalogue.errors import Interrupted, LeaseLost, StorageUnavailable, UsageError
from search.cli import (dashboard, listings, queries, report, robustness, sweep, train,
                        transfer)
from search.cli.base import (Command, HelpFormatter, debug_parent, format_parent,
                             storage_parent)
from search.cli.options import execution_parent
from search.execution import Execution

EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 3, 70, 130
EXIT_CODES = """exit codes:
  0    done
  1    the run itself failed (a training run diverged), or another driver took over
       this one's sweep after it stalled
  2    bad input: one line naming the flag, nothing written
  3    the study database cannot be reached
  70   a bug: one line; --debug prints the traceback
  130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM: what was recorded, and how to go on"""

COMMANDS: tuple[Command, ...] = (
    train.COMMAND, sweep.SWEEP, sweep.RESUME, queries.STATUS, queries.BEST, queries.TRIALS,
    transfer.TRANSFER, transfer.SUMMARY, robustness.ROBUSTNESS, robustness.SUMMARY,
    report.COMMAND, listings.RULES, listings.MODELS,
    listings.DATASETS, dashboard.COMMAND,
)

_SHARED = {"storage": storage_parent, "format": format_parent, "execution": execution_parent}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"creditsweep: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditsweep", formatter_class=HelpFormatter, parents=[debug_parent()],
                     description="Hyperparameter search for credit-assignment rules without "
                                 "weight symmetry.", epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    for command in COMMANDS:
        parents = [debug_parent()] + [_SHARED[name]() for name in command.shared]
        p = sub.add_parser(command.name, help=command.help, parents=parents,
                           description=command.description or command.help,
                           formatter_class=HelpFormatter)
        command.arguments(p)
        p.set_defaults(handler=command.run, spec=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    if args.spec.runs_ray:
        Execution(address=getattr(args, "address", None)).prepare()
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE, debug)
    except StorageUnavailable as exc:
        return _fail(exc, EXIT_STORAGE, debug)
    except LeaseLost as exc:
        return _fail(exc, EXIT_FAILED, debug)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"creditsweep: interrupted by {name}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("creditsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so, never dress it up as a usage error
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"creditsweep: internal error: {type(exc).__name__}: {first} (a bug; "
              "--debug prints the traceback)", file=sys.stderr)
        return EXIT_BUG


def _fail(exc: Exception, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    lines = str(exc).strip().splitlines()
    message = lines[0][:2000] if lines else type(exc).__name__
    print(f"creditsweep: error: {message}", file=sys.stderr)
    return code
