"""Exit codes by condition, each produced for real: a read-only database, another Optuna
schema version, a full SQLite database and a full device, ``report --out`` naming a file, a
dashboard port already taken, a closed output pipe, and read-only commands pointed at a
database that does not exist. Every one is a single line, never the 70 of a bug."""

import errno
import os
import socket
import sqlite3
import subprocess

import optuna
import pytest
import sqlalchemy
from sqlalchemy import exc as sa

from catalogue.errors import EnvironmentProblem
from procs import cli
from search.cli import EXIT_CODES, main
from search.storage import cause, classify, open_storage


def _study_db(path, name="demo", trials=3) -> str:
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for i in range(trials):
        study.add_trial(optuna.trial.create_trial(
            value=0.5 + i / 10, params={"alpha": 1e-3 * (i + 1)},
            distributions={"alpha": optuna.distributions.FloatDistribution(1e-6, 10, log=True)}))
    return url


def _read_only(path) -> str:
    """SQLite's own read-only mode (a chmod would not stop root, which the tests may be)."""
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_exit_codes_are_documented_in_the_help():
    codes = {line.split()[0] for line in EXIT_CODES.splitlines()[1:] if line[:4].strip()}
    assert {"0", "1", "2", "3", "4", "70", "130", "141"} <= codes


# --- a read-only database ------------------------------------------------------------------------

def test_a_sweep_on_a_read_only_database_is_exit_4_before_it_starts(tmp_path, cli_env):
    path = tmp_path / "db.sqlite"
    _study_db(path)
    before = path.read_bytes()
    out = subprocess.run(cli("sweep", "--storage", _read_only(path), "--rule", "backprop",
                             "--space", "lr=0.01:0.5", "--arch", "mlp", "--dataset", "digits",
                             "--trials", "1", "--epochs", "1"),
                         capture_output=True, text=True, timeout=300, env=cli_env)
    assert out.returncode == 4, out.stderr[-3000:]
    line = _one_line(out.stderr.split("\n", 1)[1])  # after the sweep's own first line
    assert "readonly database" in line and "mode=ro" in line, line
    assert not os.path.exists(cli_env["RAY_TMPDIR"])  # refused before Ray was started
    assert path.read_bytes() == before


def test_read_only_commands_read_a_read_only_database(tmp_path, capsys):
    path = tmp_path / "db.sqlite"
    _study_db(path)
    assert main(["status", "--storage", _read_only(path), "--format", "json"]) == 0
    assert "demo" in capsys.readouterr().out


def test_creating_optunas_tables_in_a_read_only_database_is_an_environment_problem(tmp_path):
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    with pytest.raises(EnvironmentProblem, match="readonly database"):
        open_storage(_read_only(path))


# --- another Optuna schema version ------------------------------------------------------------

def _set_revision(path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))


@pytest.mark.parametrize("revision,advice", [
    ("v99.0.0.bogus", "upgrade Optuna"), ("v3.0.0.a", "optuna storage upgrade")])
def test_a_database_of_another_optuna_schema_is_exit_4(tmp_path, capsys, revision, advice):
    path = tmp_path / "db.sqlite"
    url = _study_db(path)
    _set_revision(path, revision)
    before = path.read_bytes()
    for argv in (["status"], ["trials", "--study", "demo"]):
        assert main([*argv, "--storage", url]) == 4
        line = _one_line(capsys.readouterr().err)
        assert revision in line and advice in line, line
    with pytest.raises(EnvironmentProblem, match=advice):  # what sweep, transfer... open
        open_storage(url)
    assert path.read_bytes() == before


# --- a full disk -------------------------------------------------------------------------------

def _fill(engine: sqlalchemy.engine.Engine) -> BaseException:
    """A real SQLITE_FULL: the connection may grow the file to a few pages only."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
            for _ in range(64):
                conn.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(4096))")
    except sa.OperationalError as exc:
        return exc
    raise AssertionError("the database never filled up")


def _capped_engine(url: str, pages: int) -> sqlalchemy.engine.Engine:
    engine = sqlalchemy.create_engine(url)
    sqlalchemy.event.listen(engine, "connect", lambda conn, _: conn.execute(
        f"PRAGMA max_page_count = {pages}"))
    return engine


def test_a_full_sqlite_database_is_an_environment_problem(tmp_path):
    engine = _capped_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", 8)
    full = _fill(engine)
    engine.dispose()
    assert full.orig.sqlite_errorcode == sqlite3.SQLITE_FULL  # the real thing, not a mock
    assert classify(full) == "environment"
    assert cause(full, None) == "database or disk is full"


def test_a_full_device_is_an_environment_problem():
    with open("/dev/full", "wb", buffering=0) as device:
        with pytest.raises(OSError) as caught:
            device.write(b"x")
    assert caught.value.errno == errno.ENOSPC
    assert classify(caught.value) == "environment"


def test_a_database_filling_up_under_a_command_is_exit_4_in_one_line(tmp_path, capsys,
                                                                     monkeypatch):
    """Any command (a sweep recording a trial, a lease): the error reaches the command line
    untranslated and is still named for what it is."""
    import search.storage

    url = _study_db(tmp_path / "db.sqlite")
    engine = _capped_engine(f"sqlite:///{tmp_path / 'other.sqlite'}", 8)

    def writes_to_a_full_database(storage):
        raise optuna.exceptions.StorageInternalError("commit failed") from _fill(engine)

    monkeypatch.setattr(search.storage, "study_summaries", writes_to_a_full_database)
    try:
        assert main(["status", "--storage", url]) == 4
    finally:
        engine.dispose()
    line = _one_line(capsys.readouterr().err)
    assert line == f"creditsweep: error: storage {url}: database or disk is full"


def test_a_fresh_database_on_a_full_disk_is_refused_when_opened(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    def cap(dbapi_connection, _):
        dbapi_connection.execute("PRAGMA max_page_count = 2")  # too small for Optuna's tables

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", cap)
    try:
        with pytest.raises(EnvironmentProblem, match="database or disk is full"):
            open_storage(url)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", cap)


# --- report --out, dashboard, pipes ------------------------------------------------------------

def test_report_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    url = _study_db(tmp_path / "db.sqlite")
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["report", "--study", "demo", "--storage", url, "--out", str(target)]) == 2
    assert "is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert target.read_text() == "mine"


def test_a_dashboard_port_in_use_is_exit_4(tmp_path):
    url = _study_db(tmp_path / "db.sqlite")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run(cli("dashboard", "--storage", url, "--port", str(port)),
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stderr
    assert _one_line(out.stderr) == (f"creditsweep: error: port {port} on 127.0.0.1 is in "
                                     "use: stop what listens there, or give another --port")


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_a_closed_output_pipe_is_141_without_a_traceback(tmp_path, fmt):
    """``creditsweep status | head -1``: the reader is gone before the first write."""
    url = _study_db(tmp_path / "db.sqlite")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(cli("status", "--storage", url, "--format", fmt),
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert out.returncode == 141, out.stderr
    assert out.stderr == ""


# --- read-only commands never create a database ----------------------------------------------

@pytest.mark.parametrize("argv", [
    ["status"], ["best", "--study", "demo"], ["trials", "--study", "demo"],
    ["report", "--study", "demo", "--out", "OUT"], ["transfer-summary", "demo"],
    ["robustness-summary", "demo"], ["dashboard"]])
def test_read_only_commands_refuse_a_missing_database_and_create_none(tmp_path, capsys, argv,
                                                                     monkeypatch):
    import optuna_dashboard

    def serve(*args, **kwargs):
        raise AssertionError("the dashboard must not serve a missing database")

    monkeypatch.setattr(optuna_dashboard, "run_server", serve)
    missing = tmp_path / "missing.db"
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main([*argv, "--storage", f"sqlite:///{missing}"]) == 2
    assert "no database at" in _one_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == []
