"""One driver per sweep: the lease row on real SQLite and a real PostgreSQL server, and two
concurrent resumes of a killed sweep that end with exactly its N trials."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from search import lease as lease_mod
from search.lease import Lease, LeaseHeld, study_leases


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lease.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database(f"lease{time.monotonic_ns() % 10**9}")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def _holder_row(engine, key, *, pid, host, heartbeat, token="old"):
    lease_mod._create_table(engine)
    with engine.begin() as conn:
        conn.execute(lease_mod._leases.insert().values(
            key=key, token=token, host=host, pid=pid, pid_start="", heartbeat=heartbeat))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_live_driver_is_refused_naming_the_holder(engine):
    with Lease(engine, "sweep:s:1", "sweep 1"):
        with pytest.raises(LeaseHeld) as refused:
            Lease(engine, "sweep:s:1", "sweep 1").acquire()
        message = str(refused.value)
        assert f"host {socket.gethostname()}" in message and f"pid {os.getpid()}" in message
        assert "\n" not in message
        with Lease(engine, "sweep:s:2", "sweep 2"):  # another sweep is another lease
            pass
    with Lease(engine, "sweep:s:1", "sweep 1"):  # released: free again
        pass


def test_a_dead_holder_is_taken_over_a_live_one_on_another_host_is_not(engine):
    now = time.time()
    _holder_row(engine, "k-dead-pid", pid=_dead_pid(), host=socket.gethostname(), heartbeat=now)
    with Lease(engine, "k-dead-pid", "sweep a") as taken:  # its process is gone: at once
        with engine.begin() as conn:
            row = conn.execute(sa.select(lease_mod._leases)).first()
        assert row.token == taken.token and row.pid == os.getpid()
    _holder_row(engine, "k-stale", pid=1, host="elsewhere", heartbeat=now - 2 * lease_mod.STALE_S)
    with Lease(engine, "k-stale", "sweep b"):  # no heartbeat for longer than STALE_S
        pass
    _holder_row(engine, "k-live", pid=1, host="elsewhere", heartbeat=now)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 1"):
        Lease(engine, "k-live", "sweep c").acquire()


def test_contenders_for_a_dead_holder_produce_exactly_one_winner(engine):
    _holder_row(engine, "k", pid=_dead_pid(), host=socket.gethostname(), heartbeat=time.time())
    outcomes: list[str] = []
    winners: list[Lease] = []
    barrier = threading.Barrier(6)

    def contend() -> None:
        barrier.wait()
        lease = Lease(engine, "k", "sweep")
        try:
            lease.acquire()
            outcomes.append("won")
            winners.append(lease)
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lease in winners:
        lease.release()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]


def test_the_heartbeat_renews_and_a_taken_over_holder_is_told(engine, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.1)
    lost: list[str] = []
    held = Lease(engine, "k", "sweep x", on_lost=lost.append)
    held.acquire()
    try:
        def heartbeat() -> float:
            with engine.begin() as conn:
                return conn.execute(sa.select(lease_mod._leases.c.heartbeat)).scalar_one()

        first = heartbeat()
        # Beats every 0.1 s; a loaded machine may delay a few (SQLite locks, scheduling), so
        # wait for a renewal rather than assume one lands in a fixed time.
        deadline = time.time() + 10
        while heartbeat() == first and time.time() < deadline:
            time.sleep(0.05)
        assert heartbeat() > first
        with engine.begin() as conn:  # what another driver's takeover does to the row
            conn.execute(lease_mod._leases.update().values(token="someone-else"))
        deadline = time.time() + 5
        while not lost and time.time() < deadline:
            time.sleep(0.05)
        assert lost and "another driver took over" in lost[0]
    finally:
        held.release()
    with engine.begin() as conn:  # releasing does not delete the new holder's row
        assert conn.execute(sa.select(lease_mod._leases.c.token)).scalar_one() == "someone-else"


def test_study_leases_refuse_a_second_run_and_release_everything_on_the_way_out(engine):
    with study_leases(engine, ["t", "shared-baseline", None], "transfer") as leases:
        assert len(leases) == 2
        with pytest.raises(LeaseHeld, match="transfer study shared-baseline"):
            with study_leases(engine, ["other", "shared-baseline"], "transfer"):
                pass
        # The refused run released what it had taken ("other") before failing.
        with study_leases(engine, ["other"], "transfer"):
            pass
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lease_mod._leases)
                            ).scalar_one() == 0


@pytest.mark.slow
def test_two_concurrent_resumes_of_a_killed_sweep_end_with_exactly_n(postgres, tmp_path,
                                                                     cli_env):
    """Before the lease, two resumes of a killed 5-trial sweep ended with 9 trials."""
    import optuna

    from procs import cli, kill_ray_of

    url, name, n = postgres.create_database("tworesumes"), "twice", 5
    sweep = subprocess.Popen(
        cli("sweep", "--arch", "mlp", "--epochs", "2", "--trials", str(n), "--study", name,
            "--max-concurrent", "1", "--storage", url),
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and sweep.poll() is None:
        try:
            if len(optuna.load_study(study_name=name, storage=url).trials) >= 1:
                break
        except KeyError:
            pass
        time.sleep(0.2)
    assert sweep.poll() is None, sweep.stdout.read()
    sweep.kill()
    sweep.wait(timeout=30)
    kill_ray_of(cli_env["RAY_TMPDIR"])
    recorded = len(optuna.load_study(study_name=name, storage=url).trials)
    assert recorded < n
    resumes = [subprocess.Popen(cli("resume", "--study", name, "--storage", url),
                                env={**cli_env, "RAY_TMPDIR": f"{cli_env['RAY_TMPDIR']}-{i}"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outcomes = []
    for i, proc in enumerate(resumes):
        out, err = proc.communicate(timeout=400)
        kill_ray_of(f"{cli_env['RAY_TMPDIR']}-{i}")
        outcomes.append((proc.returncode, err))
    codes = sorted(code for code, _ in outcomes)
    refused = [err for code, err in outcomes if code == 2]
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert len(trials) == n, (len(trials), outcomes)
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == n
    # Both start Ray at once, so the lease decides: one runs, the other gets one line.
    assert codes == [0, 2], outcomes
    line = refused[0].strip().splitlines()
    assert len(line) == 1 and "another driver" in line[0] and "pid " in line[0], line
    print(f"\ntwo concurrent resumes after {recorded} of {n} recorded: exit codes {codes}, "
          f"{len(trials)} trials in the study")
