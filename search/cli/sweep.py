"""``creditsweep sweep | resume``: TPE searches recorded in Optuna studies."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from typing import Any

from catalogue.errors import UsageError
from catalogue.training import AUTO, option_notes, tunable_options
from search.cli.base import Command, add, comma_list, parse_numbers
from search.cli.options import add_training_options, execution_from_args, training_values
from search.cli.output import Column, Listing, emit, general
from search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, objectives_help
from search.searchers import SEARCHERS, searcher_options_help, searchers_help
from search.specs import ON_CHANGE, SCHEDULERS, SweepSpec
from search.urls import DEFAULT_STORAGE

# The training options a sweep spec holds itself; its defaults are the main job's.
SPEC_OPTIONS = ("rule", "arch", "dataset", "epochs", "seed")
SPEC_DEFAULTS = {f.name: f.default for f in fields(SweepSpec)}


def arguments(p: argparse.ArgumentParser) -> None:
    add(p, "--trials", type=int, default=SPEC_DEFAULTS["trials"],
        help="trials this sweep adds to the study")
    add(p, "--study", default=None, shown_default="RULE.ARCH.DATASET",
        help="study name; an existing study is continued")
    add(p, "--space", action="append", default=[], metavar="NAME=LOW:HIGH[:log|linear]",
        help="narrow or add a tuned parameter, e.g. alpha=1e-5:1e-1:log or lr=0.01:0.5:linear "
             "(default: the rule's space, see `creditsweep rules`)")
    add(p, "--set", "--fix", dest="fix", action="append", default=[], metavar="NAME=VALUE",
        help="hold a parameter fixed, e.g. --set sigma=1.0, as train's --set does (--fix is "
             "the same flag) (default: none)")
    add(p, "--space-file", default=None, help="TOML or YAML file with [space] and [fix] "
                                              "tables (default: none)")
    add(p, "--searcher", choices=SEARCHERS.names(), default=SPEC_DEFAULTS["searcher"],
        help=searchers_help())
    add(p, "--objective", default=DEFAULT_OBJECTIVE, metavar="|".join(OBJECTIVES.names()),
        help="with --arch A,B,…, each trial trains its setting on every listed architecture "
             "(same resources, one after another) and is scored by one objective over their "
             "best val top-1 values, a diverged one counting 0: " + objectives_help())
    add(p, "--arch-epochs", action="append", default=[], metavar="ARCH=N",
        help="depth as a fidelity: with --arch A,B,…, ARCH trains only the first N of --epochs "
             "(schedule and B's plan as for the whole run), a cheaper probe of a deep net; "
             "pair it with --objective guard to let the probe veto only (default: none)")
    add(p, "--scheduler", choices=SCHEDULERS, default=SPEC_DEFAULTS["scheduler"],
        help="asha stops poor trials early (recorded as PRUNED)")
    add(p, "--initial-points", type=int, default=None, shown_default="min(20, max(3, trials/4))",
        help="TPE's random start")
    add(p, "--searcher-option", action="append", default=[], metavar="NAME=VALUE",
        shown_default="the searcher's", help=searcher_options_help())
    add(p, "--on-change", choices=ON_CHANGE, default=SPEC_DEFAULTS["on_change"],
        help="when the study exists under another configuration (epochs, training options, "
             "data folder, fixed values): refuse, naming the difference, or new: sweep into "
             "the study NAME~FINGERPRINT of this configuration (the same one every time)")
    add_training_options(p, defaults={k: SPEC_DEFAULTS[k] for k in SPEC_OPTIONS},
                         shown={MULTIPLIER: "auto where B learns from its regularizer, else 1"})


MULTIPLIER = "feedback_lr_multiplier"


def _feedback_rate_default(rule: str, space: Any) -> Any:
    """A sweep of a rule whose B learns from its regularizer runs B at ``auto`` unless told
    otherwise: at W's rate B barely moves in a short run, and the trials TPE ranks would be
    ones the plan flags (``--feedback-lr-multiplier 1`` is the paper's fixed rate)."""
    from catalogue.rule import rule_declaration

    declared = rule_declaration(rule)
    if (MULTIPLIER in space.params or MULTIPLIER in space.fixed
            or not declared.learns_feedback or declared.receives_task_gradient):
        return space
    return space.with_fixed(MULTIPLIER, AUTO)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    from spaces import apply_overrides, default_space

    space = apply_overrides(default_space(args.rule), args.space, args.fix, args.space_file)
    train: dict[str, Any] = {}
    for name, value in training_values(args, exclude=SPEC_OPTIONS).items():
        if name in space.params:
            raise UsageError(f"--{name.replace('_', '-')} conflicts with a tuned {name} in "
                             "--space; use one of them")
        if name in tunable_options() and isinstance(value, (int, float, str)):
            # shown by `best`, transferred too
            space = space.with_fixed(name, value if isinstance(value, str) else float(value))
        else:
            train[name] = value
    space = _feedback_rate_default(args.rule, space)
    archs = comma_list(args.arch, "--arch")
    return SweepSpec(rule=args.rule, arch=archs[0], archs=archs if len(archs) > 1 else [],
                     objective=args.objective, dataset=args.dataset, trials=args.trials,
                     epochs=args.epochs, space=space, study=args.study, storage=args.storage,
                     seed=args.seed, searcher=args.searcher, scheduler=args.scheduler,
                     initial_points=args.initial_points,
                     searcher_options=parse_numbers(args.searcher_option, "--searcher-option"),
                     execution=execution_from_args(args),
                     train=train, on_change=args.on_change,
                     arch_epochs=parse_numbers(args.arch_epochs, "--arch-epochs"))


def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    spec.validate()  # before importing the driver (Ray Tune): bad input answers sooner
    from search.sweep import run_sweep

    space = spec.resolved_space()
    for note in option_notes(spec.rule, {**spec.train, **space.fixed},
                             tuple(spec.architectures()), searched=tuple(space.params)):
        print(f"creditsweep: note: {note}", file=sys.stderr, flush=True)
    shortened = spec.shortened()
    shown = [a + (f" (first {shortened[a]} of {spec.epochs} epochs)" if a in shortened else "")
             for a in spec.architectures()]
    across = (f" on each of {', '.join(shown)} (objective {spec.objective})"
              if spec.transfer_aware() else "")
    print(f"sweep {spec.study_name()}: {spec.trials} trials × {spec.epochs} epochs{across}, "
          f"{spec.searcher}, space {spec.resolved_space().describe()}", file=sys.stderr,
          flush=True)
    return _finish(run_sweep(spec), args.format)


def resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="the study (list: creditsweep status)")
    add(p, "--sweep", default=None, shown_default="the latest unfinished one",
        help="which sweep of the study")
    add(p, "--address", default=None, shown_default="the address the sweep ran with",
        help="join this Ray cluster")


def run_resume(args: argparse.Namespace) -> int:
    from search.sweep import resume_sweep

    return _finish(resume_sweep(args.study, args.storage, args.address, args.sweep),
                   args.format)


def _finish(outcome: Any, fmt: str) -> int:
    """Print the outcome; a sweep that ran trials and completed none has failed (exit 1)."""
    _emit_outcome(outcome, fmt)
    if outcome.added and not outcome.completed:
        reason = f"; the first: {outcome.first_failure}" if outcome.first_failure else ""
        print(f"creditsweep: error: no trial of sweep {outcome.sweep} completed "
              f"({outcome.failed} failed{reason})", file=sys.stderr)
        return 1
    return 0


def _emit_outcome(outcome: Any, fmt: str) -> None:
    rows = [{"parameter": k, "value": v} for k, v in (outcome.best_params or {}).items()]
    caption = ("no completed trial yet" if outcome.best_value is None
               else f"best {outcome.objective or outcome.score_label} "
                    f"{outcome.best_value:.4f}")
    caption += "\n" + next_steps(outcome)
    emit(Listing(f"study {outcome.study} in {outcome.storage}: {outcome.added} new trials "
                 f"in {outcome.wall_time:.0f} s",
                 [Column("parameter"), Column("value", show=general, right=True)],
                 rows, caption, document=asdict(outcome)), fmt)


def next_steps(outcome: Any) -> str:
    """Where everything went, and the commands a user runs next."""
    import shlex

    study = shlex.quote(outcome.study)
    storage = ("" if outcome.storage == DEFAULT_STORAGE
               else f" --storage {shlex.quote(outcome.storage)}")
    where = f"Ray folder: {outcome.experiment_path}\n" if outcome.experiment_path else ""
    return (f"{where}next: creditsweep best --study {study}{storage}\n"
            f"      creditsweep trials --study {study}{storage} --sort value:desc --top 10\n"
            f"      creditsweep report --study {study}{storage} --out report/")


SWEEP = Command("sweep", "run a TPE search over a rule's metaparameters", arguments, run,
                shared=("storage", "execution", "format"), runs_ray=True,
                description="Run (or continue) a sweep; every trial lands in an Optuna study. "
                            "With no arguments: a small real sweep on the embedded digits.")
RESUME = Command("resume", "run the missing trials of an interrupted sweep", resume_arguments,
                 run_resume, shared=("storage", "format"), runs_ray=True,
                 description="Bring the study's latest unfinished sweep (or --sweep ID) to "
                             "exactly its trial count; recorded trials are kept.")
