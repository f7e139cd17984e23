"""``creditsweep train`` / ``rules`` as a user runs them."""

import json
import subprocess

import pytest

from procs import cli
from search.cli import main


def _run(*args):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)


def _exit_code(argv):
    """main's return value, or the exit code argparse raised for its own usage errors."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.slow
def test_train_json_output():
    proc = _run("train", "--rule", "weight_mirror", "--epochs", "2", "--set", "sigma=0.5",
                "--set", "beta=2e-3", "--noise-distribution", "uniform", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["config"]["noise_distribution"] == "uniform"
    assert result["status"] == "completed" and len(result["history"]) == 2
    assert result["config"]["metaparameters"] == {"sigma": 0.5, "beta": 2e-3}
    assert "epoch 2/2" in proc.stderr  # progress goes to stderr


def test_train_table_and_csv_output(capsys):
    assert main(["train", "--rule", "sign_symmetry", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "sign_symmetry / mlp / digits: completed" in out and "best val top-1" in out
    assert main(["train", "--rule", "sign_symmetry", "--epochs", "2", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,val_top1") and len(lines) == 3


def test_rules_lists_every_rule_with_defaults():
    proc = _run("rules", "--format", "json")
    rows = {r["rule"]: r for r in json.loads(proc.stdout)}
    assert rows["information_alignment"]["defaults"] == {"alpha": 2e-3, "beta": 1e-3,
                                                         "gamma": 1e-3, "sigma": 1.0}
    assert rows["weight_mirror"]["local"] and not rows["symmetric_alignment"]["local"]
    assert "Kunin" in rows["symmetric_alignment"]["reference"]


@pytest.mark.parametrize("args,match", [
    (["train", "--rule", "nope"], "unknown rule 'nope'"),
    (["train", "--set", "alpha"], "--set expects NAME=VALUE"),
    (["train", "--rule", "weight_mirror", "--set", "alpha=abc"], "is not a number"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "no CIFAR-10 batches"),
    (["train", "--epochs", "-1"], "epochs must be a positive"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--momentum", "1.5"], "momentum must be below 1"),
    (["train", "--seed", str(2**32)], "seed must be in 0..2^32-1"),
    (["train", "--noise-distribution", "cauchy"], "invalid choice: 'cauchy'"),
])
def test_bad_input_is_one_line_exit_2(args, match, capsys):
    code = _exit_code(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err, err
