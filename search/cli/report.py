"""``creditsweep report``: PNG plots and a Markdown summary of studies, or a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from catalogue.errors import UsageError
from search.cli.base import Command

DESCRIPTION = """\
Every figure's title names the dataset, epochs, seeds and how many trials completed, failed
or stopped; accuracy axes show the chance level (1/classes), angle axes the 90 degrees a
random B gives.

--study: history.png (value per trial on the completed trials' range, best so far, failed
trials on a row of their own, stopped ones hollow), slices.png (value against every searched
parameter, one panel each, most important first, log x where the space is log), curves.png
(val top-1 per epoch of every trial, the best 3 highlighted, failed ones faint),
scatter.png (the two most important parameters), importance.png, relaxations.png,
curvature.png and architectures.png when the trials recorded what they need; summary.md
(the top trials, and the versions of creditsweep, torch, Ray, Optuna, hyperopt and the git
commit the study was recorded with; the other reports name them too).

--transfer (repeat to overlay rules): accuracy_vs_depth.png, layer_angles.png,
curvature_vs_depth.png, summary.md.

--table --transfer STUDY [--transfer STUDY ...]: table.md and table.csv instead, a
BioTorch-style table: one row per rule (backprop first), one column per target
architecture by depth (dataset/architecture when the studies span several datasets), each
cell the val top-1 % of the setting the transfer summary reports (--select of each study),
mean ± std over its completed seeds; "n/a (1 seed)" where one seed completed, "every seed
diverged" where none did. table.csv holds the same as fractions (COLUMN_mean, COLUMN_std,
COLUMN_seeds). Example:
  creditsweep report --table --out table/ --transfer transfer.weight_mirror.resnet8.digits
      --transfer transfer.symmetric_alignment.defaults.digits

--robustness: accuracy_vs_noise.png, curvature_by_rule.png, summary.md."""


def arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--study", help="a sweep study: history, slices, learning curves, "
                                       "importance, …")
    group.add_argument("--transfer", action="append",
                       help="a transfer study: accuracy vs depth (repeat to overlay rules, "
                            "or to put rules in one --table)")
    group.add_argument("--robustness", help="a robustness study: accuracy vs update noise")
    p.add_argument("--table", action="store_true",
                   help="with --transfer: write only table.md and table.csv, rules x depth "
                        "(mean val top-1 %% ± std over seeds per cell)")
    p.add_argument("--out", required=True,
                   help="folder for the PNG and Markdown files (made if missing; a file or a "
                        "symbolic link is refused)")


def run(args: argparse.Namespace) -> int:
    from search import reports as report
    from search import storage as st

    out = Path(args.out)
    if args.table and not args.transfer:
        raise UsageError("--table is drawn from transfer studies: give --transfer STUDY "
                         "(repeat for each rule)")
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
        draw = report.table_report if args.table else report.transfer_report
        files = draw(studies, out, storage)
    for name in files:
        print(out / name)
    return 0


COMMAND = Command("report", "PNG plots and a Markdown summary of studies, or a method x "
                  "depth table", arguments, run, shared=("storage",), description=DESCRIPTION)
