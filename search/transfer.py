"""Transfer studies: a source study's top-k settings re-run on other architectures.

For every target architecture and seed, each transferred setting and a backprop baseline (same
schedule) run as Ray Tune trials and land in one Optuna study, each trial carrying its role,
source study and trial, target architecture and seed. A run's key makes re-running the command
reuse finished runs. ``--retune N`` also runs an N-trial TPE sweep on every target, so
transferred settings can be compared against settings tuned where they are used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import optuna

from catalogue.errors import UsageError
from catalogue.rule import rule_declaration
from catalogue.training import TrainConfig
from search import storage as st
from search.driver import Session, StudyPlan, run_kind
from search.lease import study_key
from search.planned import PlannedRun, note_planned, run_planned
from search.provenance import provenance
from search.recording import print_progress
from search.specs import (
    DEFAULTS_SOURCE,
    SweepSpec,
    TransferSpec,
    resolve_training,
)
from search.summaries import TRANSFERRED, finished_keys
from search.summaries import summarize_transfer as summarize
from search.sweep import Sweep
from search.trial_io import split_sampled

BACKPROP = "backprop"
DEFAULT_EPOCHS = 5

__all__ = ["DEFAULTS_SOURCE", "TransferSpec", "run_transfer", "summarize"]


def run_key(role: str, target: str, source_trial: int | None, seed: int) -> str:
    return f"{role}|{target}|{source_trial}|{seed}"


def top_settings(source: optuna.Study, k: int) -> list[tuple[int, dict[str, float]]]:
    """(trial number, metaparameters incl. fixed ones) of the k best completed trials; the
    training options the sweep held fixed are the source's configuration (``source_training``),
    which every run of the transfer, the baseline included, trains under."""
    done = st.ranked_complete(source)
    if not done:
        raise UsageError(f"source study {source.study_name!r} has no completed trial")
    if k > len(done):
        raise UsageError(f"--top-k {k} but source study {source.study_name!r} has only "
                         f"{len(done)} completed trials")
    fixed = _fixed_metaparameters(source)
    return [(t.number, {**fixed, **t.params}) for t in done[:k]]


def _fixed_metaparameters(source: optuna.Study) -> dict[str, Any]:
    return split_sampled(source.user_attrs["rule"], _fixed(source))[0]


def _fixed(source: optuna.Study) -> dict[str, Any]:
    return source.user_attrs.get("space", {}).get("fixed", {})


def source_training(source: optuna.Study) -> dict[str, Any]:
    """The training options the source's trials ran under: its resolved options and the
    options its sweep held fixed (``--train-subset``, ``--lr`` …), with its epochs, and
    never a shortened run (``--stop-after-epochs``): a transfer trains the whole run."""
    attrs = source.user_attrs
    options = split_sampled(attrs["rule"], _fixed(source))[1]
    train = {**attrs.get("train", {}), **options}
    train.pop("stop_after_epochs", None)  # a source searched on probes transfers whole runs
    return {**train, "epochs": int(attrs.get("epochs", DEFAULT_EPOCHS))}


def baseline_runs(spec: TransferSpec) -> list[PlannedRun]:
    """Backprop on every target and seed (the same whichever rule is transferred)."""
    return [PlannedRun(run_key(BACKPROP, target, None, seed),
                       {"rule": BACKPROP, "arch": target, "seed": seed}, {},
                       {"role": BACKPROP, "target_arch": target, "seed": seed,
                        "source_trial": None})
            for target in spec.targets for seed in range(spec.seeds)]


def plan_runs(spec: TransferSpec, settings: list[tuple[int | None, dict[str, float]]],
              baselines: bool = True, targets: list[str] | None = None) -> list[PlannedRun]:
    """Backprop (unless ``baselines`` is False: they run in a shared baseline study) and
    every setting on every target (default: the spec's) and seed."""
    targets = list(spec.targets if targets is None else targets)
    runs = baseline_runs(spec) if baselines else []
    for target in targets:
        for seed in range(spec.seeds):
            for number, params in settings:
                runs.append(PlannedRun(
                    run_key(TRANSFERRED, target, number, seed),
                    {"rule": spec.rule, "arch": target, "seed": seed}, params,
                    {"role": TRANSFERRED, "target_arch": target, "seed": seed,
                     "source_study": spec.source_name(), "source_trial": number,
                     "metaparameters": params}))
    return runs


class Transfer:
    """A transfer study as a kind of study (``search.driver``), with its baseline study and,
    under ``--retune``, one nested sweep per target: their studies are checked and leased
    with the transfer's, in the same session."""

    def __init__(self, spec: TransferSpec) -> None:
        spec.validate()
        self.spec, self.execution = spec, spec.execution
        self.settings: list[tuple[int | None, dict[str, float]]] = []
        self.base: dict[str, Any] = {}
        self.retunes: list[Sweep] = []

    def prepare(self, session: Session) -> None:
        spec = self.spec
        if spec.defaults:
            self.settings = [(None, dict(rule_declaration(spec.rule).defaults))]
            source_options: dict[str, Any] = {}
        else:
            source = _load_source(session.storage, spec)
            spec = self.spec = _with_source_dataset(spec, source)
            self.settings = list(top_settings(source, spec.top_k))
            source_options = source_training(source)
        self.base = transfer_base(spec, source_options)
        if not spec.defaults:
            session.progress(f"every run trains under source study {spec.source_name()}'s "
                             f"configuration: {describe_training(self.base, spec.train)}")
        if spec.retune:
            self.retunes = [Sweep(sweep_spec, total=spec.retune)
                            for sweep_spec in retune_specs(spec, self.base, session.url)]
            for sweep in self.retunes:
                sweep.prepare(session)

    def studies(self) -> list[StudyPlan]:
        plans = [StudyPlan(name, attrs, identity, study_key(name), f"transfer study {name}")
                 for name, (attrs, identity) in _study_attrs(self.spec, self.base).items()]
        return plans + [plan for sweep in self.retunes for plan in sweep.studies()]

    def run(self, session: Session) -> None:
        spec = self.spec
        study = session.study(spec.study_name())
        baselines = session.study(spec.baseline_study) if spec.baseline_study else None

        def run(target_study: optuna.Study, planned: list[PlannedRun]) -> None:
            # Kept before the runs start, so that a summary of an interrupted study can say
            # how many are missing.
            note_planned(study, [r.key for r in planned])
            done = finished_keys(target_study)
            runs = [r for r in planned if r.key not in done]
            session.progress(f"{target_study.study_name}: {len(runs)} runs to do, "
                             f"{len(done)} reused")
            if runs:
                run_planned(session.execution, session.url, target_study.study_name, runs,
                            self.base, session.progress, session.leases)

        settings = self.settings
        if spec.select == "robust" and len(settings) > 1:
            # Every setting on the source first; only the one chosen there goes further.
            run(study, plan_runs(spec, settings, baselines=False, targets=[spec.source]))
            chosen = summarize(study, "robust")["selected_trial"]
            study.set_user_attr("selected_trial", chosen)
            settings = [s for s in settings if s[0] == chosen]
        run(study, plan_runs(spec, settings, baselines is None))
        if baselines is not None:
            run(baselines, baseline_runs(spec))
        if self.retunes:
            retuned = dict(study.user_attrs.get("retuned", {}))
            for target, sweep in zip(spec.targets, self.retunes):
                sweep.run(session)
                target_study = st.load_study(session.storage, sweep.spec.study_name())
                ranked = st.ranked_complete(target_study)
                retuned[target] = {"study": sweep.spec.study_name(),
                                   "value": ranked[0].value if ranked else None,
                                   "trials": len(target_study.trials)}
            study.set_user_attr("retuned", retuned)

    def summary(self, session: Session) -> dict[str, Any]:
        spec = self.spec
        baselines = session.study(spec.baseline_study) if spec.baseline_study else None
        summary = summarize(session.study(spec.study_name()), baselines=baselines)
        summary["wall_time"] = session.elapsed()
        return summary


def run_transfer(spec: TransferSpec, progress: Callable[[str], None] = print_progress
                 ) -> dict[str, Any]:
    """Run (or complete) the transfer study; returns its summary."""
    return run_kind(Transfer(spec), spec.storage, progress)


def retune_specs(spec: TransferSpec, base: dict[str, Any], url: str) -> list[SweepSpec]:
    """``--retune``'s sweep on each target, under the same training options as every
    transferred run (``base``: the source's configuration, then this command's options)."""
    train = {k: v for k, v in base.items() if k not in ("dataset", "epochs")}
    return [SweepSpec(rule=spec.rule, arch=target, dataset=spec.dataset_name(),
                      epochs=base["epochs"], storage=url, execution=spec.execution, train=train)
            for target in spec.targets]


def _load_source(storage: Any, spec: TransferSpec) -> optuna.Study:
    """The source sweep study, or one line that says which flags name it."""
    try:
        source = optuna.load_study(study_name=spec.source_name(), storage=storage)
    except KeyError:
        candidates = [n for n in st.study_names(storage)
                      if n.startswith(f"{spec.rule}.{spec.source}.")]
        hint = (f"; sweeps of {spec.rule} on {spec.source}: {', '.join(candidates[:5])} "
                "(name one with --source-study, or give its --dataset)" if candidates else
                f"; no sweep of {spec.rule} on {spec.source} here (run it first, or name "
                "the source with --source-study, or its --dataset)")
        raise UsageError(f"no source study {spec.source_name()!r}{hint}") from None
    if source.user_attrs.get("kind", "sweep") != "sweep" or "rule" not in source.user_attrs:
        raise UsageError(f"source study {source.study_name!r} is not a creditsweep sweep")
    if source.user_attrs["rule"] != spec.rule:
        raise UsageError(f"source study {source.study_name!r} is a sweep of "
                         f"{source.user_attrs['rule']!r}, not {spec.rule!r}")
    return source


def _with_source_dataset(spec: TransferSpec, source: optuna.Study) -> TransferSpec:
    """The transfer trains on the source's dataset, and names the source's architecture
    (read from the study when only ``--source-study`` was given); a different ``--dataset``
    or ``--source`` is refused."""
    dataset = source.user_attrs.get("dataset", spec.dataset_name())
    if spec.dataset is not None and spec.dataset != dataset:
        raise UsageError(f"--dataset {spec.dataset}: source study {source.study_name!r} was "
                         f"swept on {dataset}; its settings transfer on the same data")
    arch = source.user_attrs.get("arch")
    if spec.source is not None and arch is not None and spec.source != arch:
        raise UsageError(f"--source {spec.source}: source study {source.study_name!r} was "
                         f"swept on {arch}")
    return replace(spec, dataset=dataset, source=spec.source or arch)


def transfer_base(spec: TransferSpec, source_options: dict[str, Any]) -> dict[str, Any]:
    """The training options of every run of the transfer, transferred and baseline alike:
    the source's configuration, then this command's own options, resolved and checked
    against the data before anything is written."""
    merged = {**source_options, **spec.train}
    epochs = spec.epochs or int(merged.pop("epochs", DEFAULT_EPOCHS))
    merged.pop("epochs", None)
    for key in ("rule", "arch", "dataset", "seed", "metaparameters"):
        merged.pop(key, None)
    TrainConfig.from_dict({**merged, "rule": spec.rule, "arch": spec.targets[0],
                           "dataset": spec.dataset_name(), "epochs": epochs})
    train = resolve_training(spec.dataset_name(), merged, spec.trained_archs())
    return {**train, "dataset": spec.dataset_name(), "epochs": epochs}


def describe_training(base: dict[str, Any], given: dict[str, Any]) -> str:
    """The options that decide what a run means, and where each came from (the source, or
    this command's flags)."""
    shown = ("dataset", "epochs", "train_subset", "val_subset", "lr", "batch_size",
             "feedback_lr_multiplier", "data_dir")
    parts = []
    for key in shown:
        if base.get(key) is None:
            continue
        origin = " (given here)" if key in given else ""
        parts.append(f"{key} {base[key]}{origin}")
    return ", ".join(parts)


def _study_attrs(spec: TransferSpec, base: dict[str, Any]
                 ) -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    """The attributes and identity of the transfer study and of its baseline study: the
    baseline trains under exactly the transferred runs' options (``base``)."""
    identity = ("dataset", "epochs", "train")
    epochs = base["epochs"]
    studies = {spec.study_name(): ({
        "kind": "transfer", "rule": spec.rule, "arch": spec.source or DEFAULTS_SOURCE,
        "dataset": spec.dataset_name(), "source_study": spec.source_name(),
        "targets": spec.targets, "epochs": epochs, "seeds": spec.seeds, "top_k": spec.top_k,
        "select": spec.select, "train": base, "baseline_study": spec.baseline_study,
        "versions": provenance()},
        ("rule", "arch", *identity))}
    if spec.baseline_study:
        studies[spec.baseline_study] = ({"kind": "baseline", "dataset": spec.dataset_name(),
                                         "epochs": epochs, "train": base}, identity)
    return studies
