"""Transfer across a family's axis (hidden units for the rate RNN, depth for ResNets and
MLPs), and the refusals of targets a rule or the data cannot take: reports drawn from small
real transfer studies in SQLite, refusals through the command line (nothing written)."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from catalogue.tasks import InputSpec
from search import reports
from search.cli import main
from search.specs import TransferSpec, resolve_training
from search.summaries import summarize_transfer
from trainer.datasets.base import DATASETS, DatasetSource, list_datasets

# Transferred and backprop val scores per target, two seeds each; targets listed out of
# order on purpose: the report orders them by hidden units.
TRANSFERRED = {"rnn": [0.80, 0.78], "rnn32": [0.60, 0.62], "rnn64": [0.70, 0.72]}
BACKPROP = {"rnn": [0.85, 0.87], "rnn32": [0.65, 0.67], "rnn64": [0.75, 0.77]}


class Tones(DatasetSource):
    """A sequence regression set, only declared: what the refusals and labels read."""

    name = "tones"
    summary = "sequences of 20 steps x 3 inputs, a target at every step (declared only)"
    image_size = 0
    in_channels = 0
    in_memory = False
    task = "regression"

    def input_spec(self, image_size=None, options=None) -> InputSpec:
        return InputSpec.sequence(20, 3)

    def split_sizes(self, data_dir):
        return 64, 16

    def load(self, **kwargs):
        raise AssertionError("a refused command loads no data")


@pytest.fixture
def tones(monkeypatch):
    list_datasets()  # the registry discovers its sets first
    monkeypatch.setitem(DATASETS._entries, Tones.name, Tones())
    return Tones.name


def _run(role: str, target: str, seed: int, value: float) -> optuna.trial.FrozenTrial:
    attrs = {"role": role, "target_arch": target, "seed": seed,
             "source_trial": 3 if role == "transferred" else None,
             "run_key": f"{role}|{target}|{seed}", "status": "completed"}
    return create_trial(state=TrialState.COMPLETE, value=value, user_attrs=attrs,
                        intermediate_values={1: value})


def _rnn_transfer(url: str, dataset: str = "digits") -> optuna.Study:
    """A transfer of feedback alignment's settings from rnn to the other hidden sizes, as
    ``transfer`` records it."""
    study = optuna.create_study(study_name=f"transfer.feedback_alignment.rnn.{dataset}",
                                storage=url, direction="maximize")
    for key, value in {"kind": "transfer", "rule": "feedback_alignment", "arch": "rnn",
                       "dataset": dataset, "source_study": f"feedback_alignment.rnn.{dataset}",
                       "targets": list(TRANSFERRED), "epochs": 2, "seeds": 2, "top_k": 1,
                       "select": "best"}.items():
        study.set_user_attr(key, value)
    for target in TRANSFERRED:
        for seed in (0, 1):
            study.add_trial(_run("transferred", target, seed, TRANSFERRED[target][seed]))
            study.add_trial(_run("backprop", target, seed, BACKPROP[target][seed]))
    return study


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    reports.plt.close("all")


def test_an_rnn_transfer_is_ordered_and_labelled_by_hidden_units(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _rnn_transfer(url)
    summary = summarize_transfer(study)
    assert (summary["axis"], summary["axis_label"]) == ("hidden", "hidden units")
    assert {r["target"]: r["depth"] for r in summary["rows"]} == {"rnn": 128, "rnn32": 32,
                                                                  "rnn64": 64}
    group = reports.TransferSet.load([study])
    ax = reports.accuracy_depth_figure(group).axes[0]
    assert ax.get_xlabel() == "hidden units"
    assert list(ax.get_xticks()) == [32, 64, 128]
    line = next(c for c in ax.containers if c.get_label().startswith("feedback_alignment"))
    xs, ys = line.lines[0].get_data()
    assert list(xs) == [32, 64, 128]
    assert list(ys) == pytest.approx([0.61, 0.71, 0.79])  # means over seeds, by hidden size

    out = tmp_path / "report"
    assert main(["report", "--transfer", study.study_name, "--table", "--storage", url,
                 "--out", str(out)]) == 0
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "# Validation top-1 % by rule and hidden units"
    assert "| rule | rnn32 | rnn64 | rnn |" in table
    assert main(["report", "--transfer", study.study_name, "--storage", url,
                 "--out", str(out / "figures")]) == 0
    markdown = (out / "figures" / "summary.md").read_text()
    assert "# Transfer across hidden" in markdown
    assert "| target | hidden | val top-1 (mean ± std) |" in markdown


def test_a_depth_transfer_keeps_its_depth_axis(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="transfer.feedback_alignment.mlp.digits",
                                storage=url, direction="maximize")
    study.set_user_attr("targets", ["mlp8", "mlp"])
    study.set_user_attr("dataset", "digits")
    for i, target in enumerate(("mlp8", "mlp")):
        study.add_trial(_run("transferred", target, 0, 0.5 + i / 10))
    summary = summarize_transfer(study)
    assert summary["axis"] == "depth"
    ax = reports.accuracy_depth_figure(reports.TransferSet.load([study])).axes[0]
    assert ax.get_xlabel() == "network depth (layers)" and list(ax.get_xticks()) == [3, 8]


def test_a_regression_transfer_names_r2(tmp_path, tones):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _rnn_transfer(url, tones)
    assert summarize_transfer(study)["score_label"] == "val R^2"
    ax = reports.accuracy_depth_figure(reports.TransferSet.load([study])).axes[0]
    assert ax.get_ylabel().startswith("validation R^2")


def _refused(argv: list[str], tmp_path, capsys) -> str:
    db = tmp_path / "s.db"
    code = main([*argv, "--storage", f"sqlite:///{db}", "--ray-dir", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "ray").exists()
    if db.exists():  # opened to check identities at most: no study in it
        assert optuna.get_all_study_summaries(f"sqlite:///{db}") == []
    return err[0]


@pytest.mark.parametrize("argv", [
    ["transfer", "--rule", "dynamic_inversion", "--defaults", "--targets", "mlp,rnn"],
    ["sweep", "--rule", "dynamic_inversion", "--arch", "rnn", "--trials", "1"],
    ["sweep", "--rule", "dynamic_inversion", "--arch", "mlp,rnn", "--trials", "1",
     "--scheduler", "fifo"],
])
def test_a_rule_of_one_family_refuses_rnn_targets(argv, tmp_path, capsys):
    assert "dynamic_inversion trains mlp models, not rnn" in _refused(argv, tmp_path, capsys)


@pytest.mark.parametrize("argv", [
    ["transfer", "--rule", "backprop", "--defaults", "--targets", "rnn,resnet8"],
    ["sweep", "--rule", "weight_mirror", "--arch", "rnn,resnet8", "--trials", "1",
     "--scheduler", "fifo"],
    ["robustness", "--rules", "backprop", "--arch", "resnet8"],
])
def test_a_target_that_cannot_take_the_data_is_refused(argv, tmp_path, capsys, tones):
    line = _refused([*argv, "--dataset", tones], tmp_path, capsys)
    assert "resnet8 takes image inputs, but tones holds sequences" in line


def test_backprop_transfers_from_rnn_to_rnn64():
    spec = TransferSpec(rule="backprop", source="rnn", targets=["rnn64", "rnn32"])
    spec.validate()
    assert resolve_training("digits", {}, spec.trained_archs()) == {}


def test_models_show_each_familys_axis(capsys):
    assert main(["models", "--format", "json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["rnn32"]["axis"], rows["rnn32"]["scale"]) == ("hidden", 32)
    assert (rows["rnn"]["axis"], rows["rnn"]["scale"]) == ("hidden", 128)
    assert (rows["resnet20"]["axis"], rows["resnet20"]["scale"]) == ("depth", 20)
    assert (rows["two_layer"]["axis"], rows["two_layer"]["scale"]) == ("hidden", 400)
    assert list(rows["mlp"])[:4] == ["model", "family", "axis", "scale"]


def test_a_robustness_run_on_rnn_converts_its_layers_and_without_noise_is_backprop():
    """A robustness study runs backprop through its transported copy of W; on the rate RNN
    the input, recurrent and readout layers convert, and without noise the run is plain
    backprop through time, step for step."""
    import trainer
    from search.specs import RobustnessSpec

    spec = RobustnessSpec(rules=["backprop"], arch="rnn", noise=[0.0], seeds=1, epochs=1,
                          train={"max_steps_per_epoch": 4, "train_subset": 200,
                                 "val_subset": 100})
    train = spec.validate()
    copied = trainer.train({**spec.base(), **train, **spec.config_of("backprop", 0.0, 0)})
    plain = trainer.train({**spec.base(), **train, "rule": "backprop", "seed": 0})
    assert (copied.converted_layers, plain.converted_layers) == (3, 0)
    for key in ("train_loss", "val_loss", "val_top1"):
        assert [r[key] for r in copied.history] == pytest.approx(
            [r[key] for r in plain.history], rel=1e-5)
