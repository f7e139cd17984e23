"""Re-running a recorded trial: the training configuration it ran, read back from its study.

A trial records the TrainConfig it ran (``train_config``), data folder and seed included, so
``creditsweep train --from-study STUDY --trial N`` trains exactly that run again. Trials from
before that record are rebuilt from their sweep study's attributes (its training options, the
values it held fixed, the trial's sampled values); other studies have nothing to rebuild from.
"""

from __future__ import annotations

import shlex
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from catalogue.errors import UsageError
from search import storage as st
from search.trial_io import split_sampled

PLACEMENT = ("device", "num_workers")  # chosen where the re-run happens, not recorded


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` as Optuna numbers it, or the study's best."""
    if number is None:
        return st.best_trial(study)
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise UsageError(f"study {study.study_name!r} has no trial {number} (its trials are "
                     f"numbered 0-{len(study.trials) - 1})")


def trial_config(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The TrainConfig values ``trial`` ran, without where it ran (device, workers)."""
    recorded = trial.user_attrs.get("train_config")
    if recorded:
        config = dict(recorded)
    else:
        config = _rebuilt(study, trial)
    archs = study.user_attrs.get("archs") or trial.user_attrs.get("archs")
    if archs and len(archs) > 1:
        config["arch"] = None  # the trial trained several: the re-run names one
        # the last architecture's record may be a probe's; the re-run's length is the sweep's
        config["stop_after_epochs"] = (study.user_attrs.get("train") or {}).get(
            "stop_after_epochs")
    for key in PLACEMENT:
        config.pop(key, None)
    if isinstance(config.get("step_milestones"), list):
        config["step_milestones"] = tuple(config["step_milestones"])
    if isinstance(config.get("input_noise"), list):
        config["input_noise"] = tuple(config["input_noise"])
    return config


def _rebuilt(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    attrs = study.user_attrs
    if attrs.get("kind") != "sweep" or "rule" not in attrs:
        raise UsageError(f"trial {trial.number} of study {study.study_name!r} recorded no "
                         "training configuration, and the study is not a sweep to rebuild "
                         "it from")
    meta, options = split_sampled(attrs["rule"], {**(attrs.get("space") or {}).get("fixed", {}),
                                                  **trial.params})
    return {**attrs.get("train", {}), **options, "rule": attrs["rule"], "arch": attrs["arch"],
            "dataset": attrs["dataset"], "epochs": int(attrs["epochs"]),
            "seed": int(attrs.get("seed", 0)), "metaparameters": meta}


def probe_epochs(study: optuna.Study, arch: str) -> int | None:
    """The epochs ``arch`` trained in a transfer-aware sweep that shortened it
    (``--arch-epochs``); None where it trained the whole run."""
    return ((study.user_attrs.get("configuration") or {}).get("arch_epochs") or {}).get(arch)


def reproduce_command(study: optuna.Study, trial: FrozenTrial, storage_url: str) -> str:
    """The command that re-runs ``trial`` (the storage flag only where it is not the
    default; its password masked)."""
    storage = ("" if storage_url == st.DEFAULT_STORAGE
               else f" --storage {shlex.quote(st.redact(storage_url))}")
    archs = study.user_attrs.get("archs") or []
    arch = f" --arch {archs[0]}" if len(archs) > 1 else ""
    return (f"creditsweep train --from-study {shlex.quote(study.study_name)} --trial "
            f"{trial.number}{arch}{storage}")
