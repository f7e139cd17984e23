"""Hostile input in, safe output out: credentials in every form SQLAlchemy and libpq take are
masked wherever a URL is shown; names that would be a spreadsheet formula, a NaN that
breaks a JSON parser, or control and bidi characters that reorder a terminal line are
neutralised; such names are refused at creation; and a report never writes through a
symbolic link planted in its folder."""

import csv
import io
import json
import os
import stat
import subprocess
from urllib.parse import quote

import optuna
import pytest
from sqlalchemy.engine import make_url

from procs import cli
from search.cli import main
from search.specs import check_study_name
from search.urls import mask_password, redact

# Every character that means something in a URL or a conninfo string.
SECRET = "p@ss:w/rd&x=1 ?#%+é'"
ENCODED = quote(SECRET, safe="")


def _forms(secret: str) -> set[str]:
    from urllib.parse import quote_plus

    return {secret, quote(secret, safe=""), quote_plus(secret), quote(secret, safe=" +")}


def _assert_hidden(text: str, secret: str = SECRET) -> None:
    for form in _forms(secret):
        assert form not in text, (form, text)


# --- credentials -------------------------------------------------------------------------------

@pytest.mark.parametrize("url,kept", [
    (f"postgresql+psycopg://u:{ENCODED}@db.example:5432/sweeps?sslmode=require",
     {"sslmode": "require"}),
    (f"postgresql+psycopg://u@db.example/sweeps?password={ENCODED}&connect_timeout=5",
     {"connect_timeout": "5"}),
    (f"postgresql+psycopg://u:{ENCODED}@db.example/sweeps?password={ENCODED}"
     f"&sslpassword={ENCODED}&application_name=cs", {"application_name": "cs"}),
    (f"postgresql+psycopg:///sweeps?host=%2Ftmp&user=u&PASSWORD={ENCODED}", {"host": "/tmp"}),
    (f"mysql+pymysql://u@db.example/sweeps?passwd={ENCODED}&charset=utf8mb4",
     {"charset": "utf8mb4"}),
    ("mssql+pyodbc:///?odbc_connect=" + quote(f"DRIVER={{ODBC 18}};SERVER=db;PWD={SECRET};"
                                               "UID=sa", safe=""), {}),
])
def test_redact_masks_every_credential_form_and_keeps_the_rest(url, kept):
    shown = redact(url)
    _assert_hidden(shown)
    parsed, original = make_url(shown), make_url(url)
    assert (parsed.host, parsed.database, parsed.username) == \
        (original.host, original.database, original.username)
    assert {k: parsed.query[k] for k in kept} == kept
    # Every rendering of the URL in a message is masked too, and the message kept.
    for rendering in (url, original.render_as_string(hide_password=False)):
        text = mask_password(f"cannot open {rendering}: connection refused", url)
        _assert_hidden(text)
        assert text.endswith(": connection refused")


def test_mask_password_finds_the_query_form_and_pgpassword_in_any_text(monkeypatch):
    url = f"postgresql+psycopg://u@h/db?password={ENCODED}"
    text = mask_password(f"conninfo: host=h password={SECRET} dbname=db; again "
                         f"password={ENCODED}&x=1", url)
    assert text == "conninfo: host=h password=*** dbname=db; again password=***&x=1"
    # No URL at all: what the text's own syntax marks as secret.
    assert mask_password("dsn host=h password='a b' port=1 and postgresql://u:pw1@h/db",
                         None) == "dsn host=h password=*** port=1 and postgresql://u:***@h/db"
    monkeypatch.setenv("PGPASSWORD", "hunter22")
    assert mask_password('auth "hunter22" failed; xhunter22y stays', None) == \
        'auth "***" failed; xhunter22y stays'


@pytest.fixture(scope="module")
def checking_server(request):
    """A PostgreSQL server that checks the password, which is ``SECRET``."""
    from postgres import PostgresServer, available

    if not available():
        pytest.skip("PostgreSQL server binaries not installed")
    server = PostgresServer(password=SECRET).start()
    server.create_database("sweeps")
    yield server
    server.stop()


def test_a_query_password_is_masked_in_errors_tables_and_tracebacks(checking_server,
                                                                    capsys):
    base = f"postgresql+psycopg://{checking_server.user}@127.0.0.1:{checking_server.port}"
    wrong = "wr0ng" + SECRET
    url = f"{base}/sweeps?password={quote(wrong, safe='')}"
    for debug in ([], ["--debug"]):
        assert main(["status", "--storage", url, *debug]) == 2
        err = capsys.readouterr().err
        assert "password authentication failed" in err and "password=***" in err
        _assert_hidden(err, wrong)
    good = f"{base}/sweeps?password={ENCODED}"
    optuna.create_study(study_name="s", storage=good)
    assert main(["status", "--storage", good]) == 0
    out = capsys.readouterr().out
    assert "password=***" in out and "s" in out
    _assert_hidden(out)


@pytest.mark.slow
def test_an_unreachable_server_with_a_query_password_is_masked(capsys):
    url = f"postgresql+psycopg://u@127.0.0.1:1/db?connect_timeout=1&password={ENCODED}"
    assert main(["status", "--storage", url]) == 3
    err = capsys.readouterr().err
    assert "is unreachable" in err and err.count("\n") == 1
    _assert_hidden(err)


def test_pgpassword_never_shows_in_a_message(checking_server, monkeypatch, capsys):
    monkeypatch.setenv("PGPASSWORD", SECRET)  # libpq's own: the URL names no password
    url = f"postgresql+psycopg://{checking_server.user}@127.0.0.1:{checking_server.port}/sweeps"
    optuna.create_study(study_name="t", storage=url, load_if_exists=True)
    assert main(["best", "--study", SECRET, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert 'no study named "***"' in err  # repr() quotes it with " (it holds a ')
    _assert_hidden(err)


# --- output hygiene ----------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil","x")', "@SUM(A1)", "-2+3", "+cmd|' /C calc'!A0",
            "\tTAB", "\rCR"]
BIDI = "invoice\u202egnp.exe"
ESCAPE = "\x1b[31mred"


def _hostile_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for name in [*FORMULAS, BIDI, ESCAPE]:
        optuna.create_study(study_name=name, storage=url, direction="maximize")
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    dists = {"choice": optuna.distributions.CategoricalDistribution(["=1+2", "ok"])}
    study.add_trial(optuna.trial.create_trial(
        value=0.5, params={"choice": "=1+2"}, distributions=dists,
        user_attrs={"top_eigenvalue": float("nan"), "wall_time": float("inf"),
                    "diagnostics": {"weight_angle_mean": float("-inf")}}))
    return url


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_numbers_stay(tmp_path, capsys):
    url = _hostile_db(tmp_path)
    assert main(["status", "--storage", url, "--format", "csv"]) == 0
    rows = {r["study"].lstrip("'"): r for r in
            csv.DictReader(io.StringIO(capsys.readouterr().out, newline=""))}
    for name in FORMULAS:
        assert rows[name]["study"] == "'" + name
    assert rows["plain"]["study"] == "plain" and rows["plain"]["kind"] == "-"
    assert rows["plain"]["complete"] == "1" and rows["plain"]["best"] == "0.5"
    assert main(["trials", "--study", "plain", "--storage", url, "--format", "csv"]) == 0
    (trial,) = csv.DictReader(io.StringIO(capsys.readouterr().out, newline=""))
    assert trial["params_choice"] == "'=1+2" and trial["value"] == "0.5"


def test_json_is_strict_nan_and_infinities_are_null(tmp_path, capsys):
    url = _hostile_db(tmp_path)
    assert main(["trials", "--study", "plain", "--storage", url, "--format", "json"]) == 0
    (trial,) = _strict(capsys.readouterr().out)
    assert trial["top_eigenvalue"] is None and trial["wall_time"] is None
    assert trial["params_choice"] == "=1+2"  # json carries the value as it is
    assert main(["best", "--study", "plain", "--storage", url, "--format", "json"]) == 0
    best = _strict(capsys.readouterr().out)
    assert best["diagnostics"] == {"weight_angle_mean": None} and best["value"] == 0.5


def test_tables_show_control_and_bidi_characters_escaped(tmp_path, capsys):
    url = _hostile_db(tmp_path)
    assert main(["status", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "invoice\\u202egnp.exe" in out and "\\x1b[31mred" in out
    assert "\u202e" not in out and "\x1b" not in out
    assert main(["trials", "--study", BIDI, "--storage", url]) == 0
    assert capsys.readouterr().out.startswith("trials of invoice\\u202egnp.exe")


# --- names at creation ---------------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u200b", "\x07", "\x7f",
                                  "\u2028", "\ufeff"])
def test_study_names_with_control_or_format_characters_are_refused(char):
    with pytest.raises(ValueError, match=f"U\\+{ord(char):04X}"):
        check_study_name(f"good{char}name")


def test_study_names_in_any_script_are_accepted():
    check_study_name("étude.Добро.日本-1 2")


def test_a_sweep_named_with_a_bidi_override_is_refused_in_one_line(tmp_path, cli_env):
    db = tmp_path / "db.sqlite"
    out = subprocess.run(cli("sweep", "--study", BIDI, "--storage", f"sqlite:///{db}",
                             "--rule", "backprop", "--space", "lr=0.01:0.5", "--arch", "mlp",
                             "--dataset", "digits", "--trials", "1", "--epochs", "1"),
                         capture_output=True, text=True, timeout=300, env=cli_env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "creditsweep: error: --study 'invoice\\u202egnp.exe': a study name must be "
        "printable; it holds U+202E (RIGHT-TO-LEFT OVERRIDE)"]
    assert not db.exists()


# --- report files ----------------------------------------------------------------------------

def _report_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="demo", storage=url, direction="maximize")
    dist = {"alpha": optuna.distributions.FloatDistribution(1e-6, 10, log=True)}
    for value, alpha in ((0.5, 1e-3), (0.9, 2e-3), (0.7, 3e-3)):
        study.add_trial(optuna.trial.create_trial(value=value, params={"alpha": alpha},
                                                  distributions=dist))
    return url


def test_a_report_replaces_planted_links_and_never_writes_through_them(tmp_path, capsys):
    url = _report_db(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bashrc").write_text("precious\n")
    (outside / "image").write_bytes(b"precious image")
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").symlink_to(outside / "bashrc")
    (out / "history.png").symlink_to(outside / "image")
    previous = os.umask(0o022)
    try:
        assert main(["report", "--study", "demo", "--storage", url, "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    printed = capsys.readouterr().out.split()
    assert str(out / "summary.md") in printed and str(out / "history.png") in printed
    assert (outside / "bashrc").read_text() == "precious\n"
    assert (outside / "image").read_bytes() == b"precious image"
    for name in ("summary.md", "history.png"):
        path = out / name
        assert not path.is_symlink() and path.is_file()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert (out / "summary.md").read_text().startswith("# Study `demo`")
    assert (out / "history.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no temporary left


def test_a_report_out_that_is_a_symbolic_link_is_refused(tmp_path, capsys):
    url = _report_db(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "report"
    link.symlink_to(elsewhere)
    assert main(["report", "--study", "demo", "--storage", url, "--out", str(link)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link" in err[0]
    assert os.listdir(elsewhere) == []
