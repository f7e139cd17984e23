"""A study's identity is its configuration: compared on normalised values, a mismatch refused
in one line before anything is written, foreign and incompatible studies never touched,
partial summaries marked as such. Real SQLite, no Ray (those paths are in test_resolution)."""

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from catalogue.errors import UsageError
from dbstate import sqlite_digest
from search.cli import main
from search.identity import (check_study_fits, create_or_load_study, differences,
                             fingerprint, normalised)
from search.planned import RUN_KEY, note_planned
from search.robustness import summarize

CONFIG = {"epochs": 2, "train": {"input_noise": (0.5,), "lr": 0.1, "train_subset": 300},
          "fixed": {"sigma": 1.0}}
ATTRS = {"kind": "sweep", "rule": "weight_mirror", "arch": "mlp", "dataset": "digits",
         "configuration": CONFIG}
IDENTITY = ("rule", "arch", "dataset", "configuration")


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_normalised_values_compare_as_stored():
    stored = normalised(CONFIG)  # what the database gives back: lists, not tuples
    assert stored["train"]["input_noise"] == [0.5]
    same = {**CONFIG, "train": {**CONFIG["train"], "train_subset": 300.0,
                                "input_noise": [0.5]}}
    assert differences(stored, normalised(same)) == []
    other = {**CONFIG, "epochs": 1, "train": {**CONFIG["train"], "lr": 0.05}}
    assert differences(stored, normalised(other)) == ["epochs 2 -> 1", "train.lr 0.1 -> 0.05"]
    # A flag given and a flag left out differ; True is not 1.
    assert differences({"a": True}, {"a": 1}) == ["a true -> 1"]
    assert differences({"a": 1}, {}) == ["a 1 -> unset"]


def test_fingerprint_names_a_configuration_not_its_spelling():
    spelled = {"fixed": {"sigma": 1.0}, "train": {"train_subset": 300, "lr": 0.1,
                                                   "input_noise": [0.5]}, "epochs": 2}
    assert fingerprint(CONFIG) == fingerprint(spelled)
    assert fingerprint(CONFIG) != fingerprint({**CONFIG, "epochs": 3})
    assert len(fingerprint(CONFIG)) == 8


def test_a_study_under_another_configuration_is_refused_unchanged(tmp_path):
    url = _url(tmp_path)
    create_or_load_study(optuna.storages.RDBStorage(url), "s", ATTRS, IDENTITY)
    before = sqlite_digest(url)
    storage = optuna.storages.RDBStorage(url)
    # The same configuration as the database returns it (lists, whole floats): accepted.
    check_study_fits(storage, "s", {**ATTRS, "configuration": normalised(CONFIG)}, IDENTITY)
    changed = {**ATTRS, "configuration": {**CONFIG, "epochs": 1,
                                          "train": {**CONFIG["train"], "train_subset": 200}}}
    with pytest.raises(UsageError) as err:
        check_study_fits(storage, "s", changed, IDENTITY)
    assert "epochs 2 -> 1" in str(err.value) and "train.train_subset 300 -> 200" in str(err.value)
    with pytest.raises(UsageError):
        create_or_load_study(storage, "s", changed, IDENTITY)
    assert sqlite_digest(url) == before


def test_foreign_and_incompatible_studies_are_refused_before_any_write(tmp_path):
    url = _url(tmp_path)
    choice = optuna.distributions.CategoricalDistribution(["wide", "narrow"])
    foreign = optuna.create_study(study_name="cat", storage=url, direction="maximize")
    foreign.add_trial(optuna.trial.create_trial(value=0.5, params={"alpha": "wide"},
                                                distributions={"alpha": choice}))
    ours = optuna.create_study(study_name="int", storage=url, direction="maximize")
    for key, value in ATTRS.items():
        ours.set_user_attr(key, value)
    ours.add_trial(optuna.trial.create_trial(value=0.5, params={"alpha": 3},
                                             distributions={"alpha": IntDistribution(1, 5)}))
    optuna.create_study(study_name="empty", storage=url, direction="maximize")
    before = sqlite_digest(url)
    storage = optuna.storages.RDBStorage(url)
    space = {"alpha": FloatDistribution(1e-6, 10, log=True)}
    with pytest.raises(UsageError, match="not written by creditsweep"):
        create_or_load_study(storage, "cat", ATTRS, IDENTITY, space)
    with pytest.raises(UsageError, match="records alpha as int, this sweep as float"):
        create_or_load_study(storage, "int", ATTRS, IDENTITY, space)
    assert sqlite_digest(url) == before
    # An empty study made by hand (say, with `optuna create-study`) may be adopted.
    study = create_or_load_study(storage, "empty", ATTRS, IDENTITY, space)
    assert study.user_attrs["kind"] == "sweep"


@pytest.mark.parametrize("study", ["cat", "int"])
def test_the_sweep_command_refuses_them_in_one_line(tmp_path, capsys, study):
    url = _url(tmp_path)
    choice = optuna.distributions.CategoricalDistribution(["wide", "narrow"])
    if study == "cat":
        s = optuna.create_study(study_name=study, storage=url, direction="maximize")
        s.add_trial(optuna.trial.create_trial(value=0.5, params={"c": "wide"},
                                              distributions={"c": choice}))
    else:
        s = optuna.create_study(study_name=study, storage=url, direction="maximize")
        s.set_user_attr("kind", "sweep")
        s.add_trial(optuna.trial.create_trial(value=0.5, params={"alpha": 3},
                                              distributions={"alpha": IntDistribution(1, 5)}))
    before = sqlite_digest(url)
    argv = ["sweep", "--rule", "weight_mirror", "--arch", "mlp", "--study", study,
            "--trials", "1", "--epochs", "1", "--storage", url]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and f"'{study}'" in err[0], err
    assert sqlite_digest(url) == before


def _robustness_study(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="robustness.mlp.digits", storage=url,
                                direction="maximize")
    for key, value in {"kind": "robustness", "rules": ["backprop"], "noise": [0.0, 0.01],
                       "seeds": 2, "epochs": 1, "arch": "mlp", "dataset": "digits"}.items():
        study.set_user_attr(key, value)
    note_planned(study, [f"backprop|{n!r}|{s}" for n in (0.0, 0.01) for s in (0, 1)])
    study.add_trial(optuna.trial.create_trial(
        value=0.8, user_attrs={"rule": "backprop", "noise": 0.0, "seed": 0, "status":
                               "completed", RUN_KEY: "backprop|0.0|0"}))
    return study


def test_a_partial_robustness_summary_says_how_many_runs_are_missing(tmp_path, capsys):
    url = _url(tmp_path)
    summary = summarize(_robustness_study(url))
    assert (summary["planned_runs"], summary["missing_runs"]) == (4, 3)
    assert main(["robustness-summary", "--study", "robustness.mlp.digits", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL: 3 of 4 planned runs missing" in out
    assert "n/a (1 seed)" in out  # one seed has no spread to show, not ± 0
