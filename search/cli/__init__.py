"""The ``creditsweep`` command: one table of commands, one error policy.

Each command is a small unit (``search.cli.base.Command``): its arguments and its run. The
flags several commands share come from parent parsers, so they are declared once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from catalogue.errors import (EnvironmentProblem, Interrupted, LeaseLost, StorageUnavailable,
                              UsageError)
from search.cli import (dashboard, listings, queries, report, robustness, sweep, train,
                        transfer)
from search.cli.base import (Command, HelpFormatter, debug_parent, format_parent,
                             storage_parent)
from search.cli.options import execution_parent
from search.execution import Execution

EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE, EXIT_ENVIRONMENT = 1, 2, 3, 4
EXIT_BUG, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 70, 130, 128 + signal.SIGPIPE
EXIT_CODES = """exit codes:
  0    done
  1    the run itself failed (a training run diverged, a sweep completed no trial), or
       another driver took over this one's sweep after it stalled
  2    bad input: one line naming the flag, nothing written
  3    the study database cannot be reached
  4    the machine refuses: a read-only database or file system, a full disk, a
       database of another Optuna schema version, a port in use (one line)
  70   a bug: one line; --debug prints the traceback
  130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM: what was recorded, and how to go on
  141  the output was closed early (creditsweep status | head -1): nothing more printed"""

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


class _VersionAction(argparse.Action):
    """``--version``, read only when asked (the commit costs a git call)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from search.provenance import describe, provenance

        print(describe(provenance()))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditsweep", formatter_class=HelpFormatter, parents=[debug_parent()],
                     description="Hyperparameter search for credit-assignment rules without "
                                 "weight symmetry.", epilog=EXIT_CODES)
    parser.add_argument("--version", action=_VersionAction, nargs=0, default=argparse.SUPPRESS,
                        help="the versions of creditsweep, torch, Ray, Optuna and hyperopt, "
                             "and the commit of a checkout")
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
    url = _storage_of(args)
    try:
        if args.spec.runs_ray:
            Execution(address=getattr(args, "address", None)).prepare()
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE, debug, url)
    except StorageUnavailable as exc:
        return _fail(exc, EXIT_STORAGE, debug, url)
    except EnvironmentProblem as exc:
        return _fail(exc, EXIT_ENVIRONMENT, debug, url)
    except LeaseLost as exc:
        return _fail(exc, EXIT_FAILED, debug, url)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"creditsweep: interrupted by {name}: {_masked(str(exc), url)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("creditsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _unexpected(exc, debug, url)


def _storage_of(args: argparse.Namespace) -> str | None:
    """The storage URL the command uses, so that every message masks its credentials
    (None where the command takes no storage or its URL cannot be resolved)."""
    if not hasattr(args, "storage"):
        return None
    from search.urls import storage_url

    try:
        return storage_url(args.storage)
    except UsageError:
        return args.storage


def _masked(text: str, url: str | None) -> str:
    from search.urls import mask_password

    return mask_password(text, url)


def _broken_pipe() -> int:
    """The reader went away (``| head -1``): stop quietly, as a killed-by-SIGPIPE program
    would. stdout points at /dev/null from here on, so that the interpreter's flush at exit
    finds nothing to complain about (the Python docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (a test's capture): nothing to flush
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _unexpected(exc: Exception, debug: bool, url: str | None) -> int:
    """An error no layer named: the machine refusing (a full disk, a read-only database,
    by its error code) is exit 4; anything else is a bug, never dressed up as usage."""
    from sqlalchemy.exc import SQLAlchemyError

    from search.storage import cause, classify, redact

    if classify(exc, url) == "environment":
        where = f"storage {redact(url)}: " if url and _chain_has(exc, SQLAlchemyError) else ""
        return _fail(EnvironmentProblem(where + cause(exc, url)), EXIT_ENVIRONMENT, debug, url)
    _print_traceback(debug, url)
    lines = _masked(str(exc), url).strip().splitlines()
    first = lines[0][:300] if lines else ""
    print(f"creditsweep: internal error: {type(exc).__name__}: {first} (a bug; "
          "--debug prints the traceback)", file=sys.stderr)
    return EXIT_BUG


def _chain_has(exc: BaseException | None, kind: type) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fail(exc: Exception, code: int, debug: bool, url: str | None = None) -> int:
    _print_traceback(debug, url)
    lines = _masked(str(exc), url).strip().splitlines()
    message = lines[0][:2000] if lines else type(exc).__name__
    print(f"creditsweep: error: {message}", file=sys.stderr)
    return code


def _print_traceback(debug: bool, url: str | None) -> None:
    """The traceback of the error being handled, credentials masked, with --debug."""
    if debug:
        print(_masked(traceback.format_exc(), url), end="", file=sys.stderr)
