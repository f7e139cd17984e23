"""A shared database holds studies other tools wrote: a multi-objective one, one that
minimizes, one with a categorical parameter, one whose name is console markup. None of them
may break a command for the others; each is read correctly or refused in one line."""

import csv
import io

import optuna
import pytest

from search.cli import main

FLOAT = optuna.distributions.FloatDistribution(0.0, 10.0)


def _shared_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    multi = optuna.create_study(study_name="multi", storage=url,
                                directions=["maximize", "minimize"])
    for a in (1.0, 2.0):
        multi.add_trial(optuna.trial.create_trial(values=[a, 10 - a], params={"a": a},
                                                  distributions={"a": FLOAT}))
    mini = optuna.create_study(study_name="mini", storage=url, direction="minimize")
    for a in (5.0, 2.0, 7.0):
        mini.add_trial(optuna.trial.create_trial(value=a + 3, params={"a": a},
                                                 distributions={"a": FLOAT}))
    cat = optuna.create_study(study_name="cat", storage=url, direction="maximize")
    choice = optuna.distributions.CategoricalDistribution(["wide", "narrow"])
    for c, v in (("wide", 0.4), ("narrow", 0.8)):
        cat.add_trial(optuna.trial.create_trial(value=v, params={"c": c},
                                                distributions={"c": choice}))
    optuna.create_study(study_name="[bold red]x[/", storage=url, direction="maximize")
    return url


def _csv(capsys) -> list[dict]:
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_status_lists_every_kind_of_study(tmp_path, capsys):
    url = _shared_db(tmp_path)
    assert main(["status", "--storage", url, "--format", "csv"]) == 0
    rows = {r["study"]: r for r in _csv(capsys)}
    assert set(rows) == {"multi", "mini", "cat", "[bold red]x[/"}
    assert rows["multi"]["best"] == "" and rows["multi"]["direction"] == "maximize,minimize"
    assert float(rows["mini"]["best"]) == 5.0  # the smallest, not the largest
    assert main(["status", "--storage", url]) == 0  # the markup name, in a rich table
    assert "[bold red]x[/" in capsys.readouterr().out


def test_best_reads_each_study_in_its_own_direction(tmp_path, capsys):
    url = _shared_db(tmp_path)
    assert main(["best", "--study", "mini", "--storage", url, "--format", "csv"]) == 0
    assert {r["parameter"]: r["value"] for r in _csv(capsys)}["a"] == "2.0"
    assert main(["best", "--study", "cat", "--storage", url, "--format", "csv"]) == 0
    assert {r["parameter"]: r["value"] for r in _csv(capsys)}["c"] == "narrow"
    assert main(["best", "--study", "multi", "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 objectives" in err and len(err.splitlines()) == 1


def test_trials_and_report_on_foreign_studies(tmp_path, capsys):
    url = _shared_db(tmp_path)
    assert main(["trials", "--study", "multi", "--storage", url, "--format", "csv"]) == 0
    assert [r["value"] for r in _csv(capsys)] == ["1,9", "2,8"]
    for name in ("mini", "cat"):
        out = tmp_path / f"report-{name}"
        assert main(["report", "--study", name, "--storage", url, "--out", str(out)]) == 0
        assert (out / "history.png").stat().st_size > 0
    summary = (tmp_path / "report-cat" / "summary.md").read_text()
    assert "| 1 | 1 | 0.8000 | narrow |" in summary
    mini = (tmp_path / "report-mini" / "summary.md").read_text()
    assert mini.index("| 1 | 1 | 5.0000") < mini.index("| 2 | 0 | 8.0000")
    capsys.readouterr()
    out = tmp_path / "report-multi"
    assert main(["report", "--study", "multi", "--storage", url, "--out", str(out)]) == 2
    assert "2 objectives" in capsys.readouterr().err
    assert not out.exists()  # refused before writing anything


@pytest.mark.parametrize("command", ["sweep", "resume"])
def test_a_sweep_never_continues_a_study_it_did_not_write(tmp_path, capsys, command):
    url = _shared_db(tmp_path)
    before = [t.value for t in optuna.load_study(study_name="mini", storage=url).trials]
    argv = {"sweep": ["sweep", "--study", "mini", "--trials", "1", "--epochs", "1"],
            "resume": ["resume", "--study", "mini"]}[command]
    assert main([*argv, "--storage", url]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "'mini'" in errors[0]
    after = [t.value for t in optuna.load_study(study_name="mini", storage=url).trials]
    assert after == before
