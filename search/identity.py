"""A study's identity: what its trials were, checked before anything is written.

Every study creditsweep writes records, beside its kind (sweep, transfer, baseline,
robustness), the configuration its trials ran under: the epochs, the resolved training options
(data folder, subsets, learning rate …) and the values a sweep held fixed. Continuing the study
under another configuration would mix trials that mean different things, and ``best``,
``report`` and ``transfer`` would describe the earlier ones with the newest settings; so a
continuation must match, compared on normalised values (tuples and lists alike, numbers by
value), and a mismatch is refused in one line that names the difference.

A study another tool wrote is never adopted: it has trials or attributes but no creditsweep
kind. Existing trials whose parameter distributions differ from the space (an integer
``alpha``, a categorical one) would make every write fail after the trials trained, so they
are refused up front too. All of this reads only: the database bytes stay as they were.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility

from catalogue.errors import UsageError
from search.storage import single_direction

CONFIGURATION = "configuration"  # the study attribute that holds the trials' configuration
KIND = "kind"


def normalised(value: Any) -> Any:
    """A value as JSON keeps it, so that what a study stored compares equal to what a command
    builds: tuples become lists, keys strings, whole floats stay numbers equal to ints."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def differences(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """``key: stored -> wanted`` for every leaf that differs, in key order."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(stored) | set(wanted)):
            out += differences(stored.get(key), wanted.get(key),
                               f"{path}.{key}" if path else str(key))
        return out
    if _same(stored, wanted):
        return []
    return [f"{path or 'value'} {_short(stored)} -> {_short(wanted)}"]


def _same(a: Any, b: Any) -> bool:
    """Equal as values: 300 and 300.0 alike, True and 1 not."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _short(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint(configuration: Mapping[str, Any]) -> str:
    """Eight hex digits naming a configuration: a study forked on a change is named by it, so
    the same command lands in the same fork every time."""
    text = json.dumps(normalised(dict(configuration)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def configuration_of(study: optuna.Study) -> dict[str, Any] | None:
    """The configuration a study's trials ran under (None for a study from before it was
    recorded)."""
    value = study.user_attrs.get(CONFIGURATION)
    return value if isinstance(value, dict) else None


def check_fits(study: optuna.Study, attrs: Mapping[str, Any], identity: tuple[str, ...],
               distributions: Mapping[str, BaseDistribution] | None = None,
               hint: str = "choose another study name") -> None:
    """Refuse, in one line, a study this command must not continue; ``hint`` says what to
    do about a different configuration."""
    name = study.study_name
    existing = study.user_attrs
    if KIND not in existing and (existing or study.get_trials(deepcopy=False)):
        raise UsageError(f"study {name!r} was not written by creditsweep (it has trials or "
                         "attributes but no creditsweep kind); choose another --study")
    if single_direction(study) != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"study {name!r} minimizes its objective: it was not written by "
                         "creditsweep; choose another --study")
    if existing.get(KIND, attrs.get(KIND)) != attrs.get(KIND):
        raise UsageError(f"study {name!r} is a {existing[KIND]} study, not a "
                         f"{attrs.get(KIND)} study; choose another --study")
    for key in identity:
        if key in existing and key in attrs:
            diff = differences(normalised(existing[key]), normalised(attrs[key]),
                               "" if key == CONFIGURATION else key)
            if diff:
                shown = "; ".join(diff[:4]) + (" …" if len(diff) > 4 else "")
                raise UsageError(f"study {name!r} holds trials of another configuration "
                                 f"({shown}); {hint}")
    if distributions:
        _check_distributions(study, distributions)


def _check_distributions(study: optuna.Study,
                         distributions: Mapping[str, BaseDistribution]) -> None:
    """Optuna refuses a trial whose parameter's distribution differs in kind from the
    study's: found only when the first finished trial is written, after it trained."""
    for trial in study.get_trials(deepcopy=False):
        for param, old in trial.distributions.items():
            new = distributions.get(param)
            if new is None:
                continue
            try:
                check_distribution_compatibility(old, new)
            except ValueError as exc:
                raise UsageError(
                    f"study {study.study_name!r} records {param} as {_shown(old)}, this sweep "
                    f"as {_shown(new)} ({str(exc).rstrip('.').lower()}): its trials could not "
                    "be recorded there; choose another --study") from None
        return  # Optuna keeps one distribution per parameter and study: one trial suffices


def _shown(distribution: BaseDistribution) -> str:
    kind = type(distribution).__name__.removesuffix("Distribution").lower()
    log = getattr(distribution, "log", None)
    return f"{kind}{' (log)' if log else ''}"


def check_study_fits(storage: optuna.storages.BaseStorage, name: str,
                     attrs: Mapping[str, Any], identity: tuple[str, ...],
                     distributions: Mapping[str, BaseDistribution] | None = None,
                     hint: str = "choose another study name") -> None:
    """``create_or_load_study``'s checks without a write: a command makes them before it
    takes its lease, so that input it refuses leaves the database as it was."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    check_fits(study, attrs, identity, distributions, hint)


def create_or_load_study(storage: optuna.storages.BaseStorage, name: str,
                         attrs: Mapping[str, Any], identity: tuple[str, ...],
                         distributions: Mapping[str, BaseDistribution] | None = None
                         ) -> optuna.Study:
    """The study for a run of a command, checked as ``check_fits`` says; attributes outside
    the identity (the latest space, searcher) are brought up to date."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    check_fits(study, attrs, identity, distributions)
    existing = study.user_attrs
    for key, value in attrs.items():
        if normalised(existing.get(key)) != normalised(value):
            study.set_user_attr(key, value)
    return study
