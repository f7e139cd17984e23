"""Reading studies: loading one by name, ranking its trials, the rows the CLI prints.

Apart from the writing side because these read any Optuna study in the database, also ones
creditsweep did not write (another tool's, minimizing, multi-objective): each query says what
it cannot answer in one line instead of assuming creditsweep's own layout.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from catalogue.errors import UsageError
from search.records import trial_measures
from search.scores import scores_by_arch

PARAMS = "params_"  # column prefix of a trial's parameters, as Optuna's trials_dataframe has it


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = study_names(storage)
        shown = ", ".join(repr(n) for n in names[:20]) + (" …" if len(names) > 20 else "")
        hint = f"; studies here: {shown}" if names else "; the database has none"
        raise UsageError(f"no study named {name!r}{hint}") from None
    except ValueError:  # optuna: several studies match, or the name is ambiguous
        raise UsageError(f"study {name!r} cannot be loaded by name") from None


def single_direction(study: optuna.Study) -> optuna.study.StudyDirection:
    """The direction of a single-objective study; a multi-objective one has no one best."""
    if len(study.directions) != 1:
        raise UsageError(f"study {study.study_name!r} has {len(study.directions)} objectives: "
                         "creditsweep reads single-objective studies only")
    return study.directions[0]


def ranked_complete(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first, in the study's own direction (maximize or minimize)."""
    maximize = single_direction(study) == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: -t.value if maximize else t.value)


def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = optuna.load_study(study_name=frozen.study_name,
                                   storage=storage).get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        directions = [d.name.lower() for d in frozen.directions]
        # ``t.value`` raises on a multi-objective study (another tool's, in a shared database)
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE
                  and len(directions) == 1 and t.values and math.isfinite(t.values[0])]
        best = None
        if values:
            best = max(values) if directions[0] == "maximize" else min(values)
        attrs = frozen.user_attrs
        rows.append({"study": frozen.study_name, "kind": attrs.get("kind", "-"),
                     "rule": attrs.get("rule"), "arch": attrs.get("arch"),
                     "dataset": attrs.get("dataset"), "direction": ",".join(directions),
                     "complete": counts[TrialState.COMPLETE], "failed": counts[TrialState.FAIL],
                     "pruned": counts[TrialState.PRUNED],
                     "running": counts[TrialState.RUNNING], "best": best})
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial:
    ranked = ranked_complete(study)
    if not ranked:
        raise UsageError(f"study {study.study_name!r} has no completed trial yet")
    return ranked[0]


def _shown_value(trial: FrozenTrial) -> float | str | None:
    """The objective, or a multi-objective study's values joined (``t.value`` raises there)."""
    values = trial.values
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(f"{v:.6g}" for v in values)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, columns in a stable order: number, state, value, the parameters
    (sorted), then what creditsweep records."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    archs = study.user_attrs.get("archs") or []  # a transfer-aware sweep: one column each
    rows = []
    for t in trials:
        by_arch = scores_by_arch(t.user_attrs)
        across = {f"top1_{a}": by_arch.get(a) for a in archs}
        if archs:
            across["diverged_archs"] = ",".join(t.user_attrs.get("diverged_archs") or {}) or None
        rows.append({"number": t.number, "state": t.state.name, "value": _shown_value(t),
                     **{f"{PARAMS}{k}": t.params.get(k) for k in names}, **across,
                     "searcher": t.user_attrs.get("searcher"),
                     "epochs": t.user_attrs.get("epochs_completed"),
                     "train_size": t.user_attrs.get("train_size"),
                     **trial_measures(t.user_attrs),
                     "wall_time": t.user_attrs.get("wall_time"),
                     **{k: t.user_attrs.get(k) for k in ("node_ip", "device", "gpus",
                                                         "attempts")},
                     "fail_reason": t.user_attrs.get("fail_reason")})
    return rows
