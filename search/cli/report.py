"""``creditsweep report``: PNG plots and a Markdown summary of studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from catalogue.errors import UsageError
from search.cli.base import Command


def arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--study", help="a sweep study: history, scatter, importance")
    group.add_argument("--transfer", action="append",
                       help="a transfer study: accuracy vs depth (repeat to overlay rules)")
    group.add_argument("--robustness", help="a robustness study: accuracy vs update noise")
    p.add_argument("--out", required=True,
                   help="folder for the PNG and Markdown files (made if missing; a file or a "
                        "symbolic link is refused)")


def run(args: argparse.Namespace) -> int:
    from search import report
    from search import storage as st

    out = Path(args.out)
    report.check_output_folder(out)
    storage = st.open_storage(st.storage_url(args.storage), create=False)
    if args.study:
        files = report.study_report(st.load_study(storage, args.study), out)
    elif args.robustness:
        study = st.load_study(storage, args.robustness)
        if study.user_attrs.get("kind") != "robustness":
            raise UsageError(f"study {args.robustness!r} is not a robustness study")
        files = report.robustness_report(study, out)
    else:
        studies = [st.load_study(storage, name) for name in args.transfer]
        for s in studies:
            if s.user_attrs.get("kind") != "transfer":
                raise UsageError(f"study {s.study_name!r} is not a transfer study")
        files = report.transfer_report(studies, out, storage)
    for name in files:
        print(out / name)
    return 0


COMMAND = Command("report", "PNG plots and a Markdown summary of studies", arguments, run,
                  shared=("storage",))
