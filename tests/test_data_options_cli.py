"""``--model-option`` and ``--dataset-option`` on the command line, and the refusals of a model
that cannot take a dataset: one line, exit 2, nothing written."""

import pytest

from search.cli import main
from search.cli.options import training_values


def _refused(argv, tmp_path, capsys):
    db = tmp_path / "studies.db"
    code = main([*argv, "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert not db.exists() and list(tmp_path.iterdir()) == []
    return err


@pytest.mark.parametrize("command", [["train"], ["sweep", "--trials", "1"]])
@pytest.mark.parametrize("arch, dataset, match", [
    ("resnet8", "delayed_match", "resnet8 takes image inputs, but delayed_match holds "
                                 "sequences of 90 steps x 2 inputs"),
    ("lenet", "delayed_match", "lenet takes image inputs"),
    ("mlp", "pattern_generation", "mlp reads its output once per example, but "
                                  "pattern_generation is a regression task"),
])
def test_a_model_that_cannot_take_the_set_is_refused(command, arch, dataset, match, tmp_path,
                                                     capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert match in _refused([*command, "--rule", "feedback_alignment", "--space",
                              "lr=0.01:0.1", "--arch", arch, "--dataset", dataset]
                             if command[0] == "sweep" else
                             [*command, "--arch", arch, "--dataset", dataset], tmp_path, capsys)


@pytest.mark.parametrize("flags, match", [
    (["--dataset-option", "delay=3"], "delayed_match takes no option delay (its options: "),
    (["--dataset-option", "delay_steps=x"], "'x' is not a number"),
    (["--dataset-option", "delay_steps"], "--dataset-option expects NAME=VALUE"),
    (["--dataset-option", "cue_steps=2.5"], "cue_steps takes a whole number"),
    (["--dataset-option", "delay_steps=-3"], "delay_steps must be at least 0"),
    (["--dataset-option", "noise=1", "--dataset-option", "noise=2"], "noise is given twice"),
    (["--model-option", "hiden=3"], "rnn takes no option 'hiden'"),
    (["--model-option", "leak=fast"], "'fast' is not a number"),
    (["--model-option", "hidden=64"], "rnn is declared with hidden=128, its value on the hidden "
                                      "axis; for another, name the architecture"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_bad_option_is_one_line_and_writes_nothing(command, flags, match, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--rule", "feedback_alignment", "--space", "lr=0.01:0.1"] if command == "sweep" \
        else []
    err = _refused([command, *extra, "--arch", "rnn", "--dataset", "delayed_match", *flags],
                   tmp_path, capsys)
    assert match in err


@pytest.mark.parametrize("command", ["train", "sweep", "transfer", "robustness"])
def test_the_options_fill_the_training_configuration(command):
    from search.cli import build_parser

    required = {"transfer": ["--rule", "backprop", "--targets", "rnn32", "--defaults"],
                "robustness": ["--rules", "backprop"]}.get(command, [])
    args = build_parser().parse_args([command, *required, "--model-option", "recurrent_gain=1",
                                      "--model-option", "leak=0.5", "--dataset-option",
                                      "delay_steps=700", "--dataset-option", "noise=1e-2"])
    values = training_values(args)
    assert values["model_options"] == {"recurrent_gain": 1, "leak": 0.5}
    assert type(values["model_options"]["recurrent_gain"]) is int
    assert values["dataset_options"] == {"delay_steps": 700, "noise": 0.01}


def test_train_runs_a_generated_set_with_its_options(capsys):
    assert main(["train", "--rule", "feedback_alignment", "--arch", "rnn32", "--dataset",
                 "pattern_generation", "--epochs", "1", "--no-diagnostics",
                 "--dataset-option", "train_size=16", "--dataset-option", "val_size=8",
                 "--dataset-option", "steps=12", "--model-option", "leak=0.5",
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "val_r2" in out.splitlines()[0] and "val_top1" not in out


def test_listings_show_tasks_shapes_options_and_axes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "99")
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) < 100
    assert any("delayed_match" in ln and "classification" in ln and "90x2 sequence" in ln
               for ln in lines)
    assert any("pattern_generation" in ln and "regression" in ln for ln in lines)
    assert any("fashion_mnist" in ln and "1x28x28 image" in ln for ln in lines)
    assert "delay_steps=70" in out and "spike_prob=0.05" in out
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) < 100
    rnn = next(ln.split() for ln in lines if ln.startswith("rnn64 "))
    assert rnn[1:5] == ["rnn", "hidden", "64", "sequence,image"]
    assert next(ln.split() for ln in lines if ln.startswith("resnet20 "))[1:5] == [
        "cifar_resnet", "depth", "20", "image"]
