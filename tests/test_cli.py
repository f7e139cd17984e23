"""The command line's contract: one table of commands, defaults from their one source, help
that shows them, one output formatter, and errors that say what they are."""

import argparse
import csv
import io
import json
import subprocess
import sys
import textwrap
from dataclasses import fields

import optuna

from catalogue.training import TrainConfig, training_options
from procs import cli
from search.cli import COMMANDS, build_parser, main
from search.cli.base import HelpFormatter
from search.specs import SweepSpec


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_in_the_table_and_every_option_shows_its_default():
    subs = _subparsers(build_parser())
    assert list(subs) == [c.name for c in COMMANDS]
    formatter = HelpFormatter("creditsweep")
    for name, parser in subs.items():
        for action in parser._actions:
            if not action.option_strings or action.dest == "help" or action.required:
                continue
            text = formatter._get_help_string(action)
            assert action.help, (name, action.dest)
            assert "(default" in text, (name, action.option_strings, text)


def test_cli_defaults_come_from_trainconfig_and_the_sweep_spec():
    subs = _subparsers(build_parser())
    train = {a.dest: a for a in subs["train"]._actions}
    for field in training_options():  # `train` takes every training option
        action = train[field.name]
        shown = getattr(action, "shown_default", action.default)
        assert shown == getattr(TrainConfig(), field.name), field.name
    sweep = {a.dest: a for a in subs["sweep"]._actions}
    spec = SweepSpec()
    for name in ("trials", "epochs", "rule", "arch", "dataset", "seed", "searcher"):
        assert sweep[name].default == getattr(spec, name), name
    assert {f.name for f in training_options()} <= set(sweep)  # every option, one source
    transfer = {a.dest for a in subs["transfer"]._actions}
    assert {f.name for f in training_options()} - {"arch", "seed"} <= transfer
    for command in ("sweep", "transfer"):
        dests = {a.dest for a in subs[command]._actions}
        assert {f.name for f in fields(__import__("search.execution").execution.Execution)} \
            <= dests


def _study_db(tmp_path, name="demo"):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for value, alpha in ((0.5, 1e-3), (0.9, 2e-3), (0.7, 3e-3)):
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"alpha": alpha},
            distributions={"alpha": optuna.distributions.FloatDistribution(1e-6, 10, log=True)}))
    return url


def test_queries_import_neither_torch_nor_ray(tmp_path):
    url = _study_db(tmp_path)
    probe = textwrap.dedent(f"""
        import contextlib, io, sys
        from search.cli import main
        for argv in (["status"], ["best", "--study", "demo"], ["trials", "--study", "demo"],
                     ["rules"], ["models"]):
            with contextlib.redirect_stdout(io.StringIO()):
                assert main([*argv, "--storage", {url!r}] if argv[0] in
                            ("status", "best", "trials") else argv) == 0, argv
        for argv in (["--help"], ["sweep", "--help"], ["train", "--help"]):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    main(argv)
            except SystemExit:
                pass
        print(sorted(m for m in ("torch", "ray", "numpy") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch" not in out.stdout and "ray" not in out.stdout, out.stdout


def test_one_formatter_with_stable_columns(tmp_path, capsys):
    url = _study_db(tmp_path)
    assert main(["trials", "--study", "demo", "--storage", url, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:4] == ["number", "state", "value", "params_alpha"] and len(rows) == 4
    assert main(["trials", "--study", "demo", "--storage", url, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data[0])[:4] == rows[0][:4]
    assert main(["status", "--storage", url, "--format", "csv"]) == 0
    status = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert status[0]["study"] == "demo" and float(status[0]["best"]) == 0.9
    assert main(["best", "--study", "demo", "--storage", url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("alpha,0.002")


def test_markup_in_a_study_name_is_printed_as_it_is(tmp_path, capsys):
    url = _study_db(tmp_path, name="[bold red]x[/] [link=http://a]")
    assert main(["status", "--storage", url]) == 0
    assert "[bold red]x[/] [link=http://a]" in capsys.readouterr().out


def test_a_bug_is_not_a_usage_error_and_debug_shows_the_traceback(tmp_path, capsys,
                                                                  monkeypatch):
    import search.storage

    url = _study_db(tmp_path)

    def broken(storage):
        raise TypeError("a deliberately broken query")

    monkeypatch.setattr(search.storage, "study_summaries", broken)
    assert main(["status", "--storage", url]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: TypeError: a deliberately broken query" in err[0]
    assert main(["status", "--storage", url, "--debug"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "def broken" not in err
    assert "in broken" in err


def test_usage_errors_exit_2_in_one_line_with_debug_adding_a_traceback(capsys):
    assert main(["train", "--rule", "nope"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["train", "--rule", "nope", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_python_m_entry_point_and_console_script_agree(tmp_path):
    out = subprocess.run(cli("models", "--format", "json"), capture_output=True, text=True,
                         timeout=60)
    names = [r["model"] for r in json.loads(out.stdout)]
    assert "resnet20" in names and "resnet18" in names and "mlp" in names


def test_version_names_every_package_that_shapes_a_result(capsys):
    import pytest

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for package in ("creditsweep ", "torch ", "ray ", "optuna ", "hyperopt "):
        assert package in out, out


def test_trials_filters_sorts_and_chooses_columns(tmp_path, capsys, monkeypatch):
    url = _study_db(tmp_path)
    study = optuna.load_study(study_name="demo", storage=url)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params={"alpha": 5.0},
        distributions={"alpha": optuna.distributions.FloatDistribution(1e-6, 10, log=True)},
        user_attrs={"fail_reason": "diverged: non-finite training loss " + "x" * 200}))
    query = ["trials", "--study", "demo", "--storage", url]
    assert main([*query, "--state", "complete", "--sort", "value:desc", "--top", "2",
                 "--columns", "number,value,params_alpha", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["number", "value", "params_alpha"], ["1", "0.9", "0.002"],
                    ["2", "0.7", "0.003"]]
    # A table drops the columns no trial fills and shortens long reasons to fit a terminal.
    monkeypatch.setenv("COLUMNS", "100")
    assert main([*query, "--state", "fail"]) == 0
    table = capsys.readouterr().out
    assert "alpha" in table and "reason" in table and "wall_time" not in table
    assert "x" * 60 not in table and "…" in table
    for bad, match in ((["--state", "done"], "unknown state"), (["--sort", "speed"], "no column"),
                       (["--columns", "value,nope"], "no column 'nope'"), (["--top", "0"],
                                                                          "at least 1")):
        assert main([*query, *bad]) == 2
        assert match in capsys.readouterr().err
