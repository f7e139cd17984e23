"""``creditsweep dashboard`` serves optuna-dashboard on a study database, read as it is."""

import json
import subprocess
import time
import urllib.request

import optuna

from procs import cli, free_port


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_lists_the_studies(tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = optuna.create_study(study_name="weight_mirror.mlp.digits", storage=url,
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.75))
    port = free_port()
    server = subprocess.Popen(cli("dashboard", "--storage", url, "--port", str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/api/studies"
    try:
        body, deadline = None, time.time() + 60
        while body is None and time.time() < deadline and server.poll() is None:
            try:
                body = _get(base)
            except OSError:
                time.sleep(0.3)
        assert body is not None, server.stdout.read() if server.poll() is not None else ""
        (summary,) = body["study_summaries"]
        assert summary["study_name"] == "weight_mirror.mlp.digits"
        detail = _get(f"{base}/{summary['study_id']}")
        assert [t["values"] for t in detail["trials"]] == [[0.75]]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_bad_port_is_one_line(capsys):
    from search.cli import main

    assert main(["dashboard", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == (
        "creditsweep: error: --port must be 1-65535, got 70000")
