"""One driver per sweep: the lease row on real SQLite and a real PostgreSQL server (its fence,
the database's clock, hosts whose clocks are wrong), a recorder fenced by it, and two
concurrent resumes of a killed sweep that end with exactly its N trials."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from catalogue.errors import LeaseLost
from search import lease as lease_mod
from search import storage as st
from search.lease import FREE, Lease, LeaseHeld, fence_of, held_leases, study_key
from search.recording import Recorder


def _wait_for(ready, what: str, timeout: float = 60.0, every: float = 0.05) -> None:
    """Poll ``ready()`` until it holds; ``timeout`` is a generous bound, not an expectation."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _row(engine, key):
    with engine.begin() as conn:
        return conn.execute(sa.select(lease_mod._leases)
                            .where(lease_mod._leases.c.key == key)).first()


def _db_time(engine) -> float:
    with engine.begin() as conn:
        return conn.execute(sa.select(lease_mod.db_now(engine))).scalar_one()


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
        _wait_for(lambda: heartbeat() > first, "a renewed heartbeat")
        with engine.begin() as conn:  # what another driver's takeover does to the row
            conn.execute(lease_mod._leases.update().values(token="someone-else"))
        _wait_for(lambda: bool(lost), "the holder to be told")
        assert "another driver took over" in lost[0]
    finally:
        held.release()
    with engine.begin() as conn:  # releasing does not delete the new holder's row
        assert conn.execute(sa.select(lease_mod._leases.c.token)).scalar_one() == "someone-else"


def _studies(*names: str) -> list[tuple[str, str]]:
    return [(study_key(name), f"transfer study {name}") for name in names]


def test_held_leases_refuse_a_second_run_and_release_everything_on_the_way_out(engine):
    with held_leases(engine, _studies("t", "shared-baseline", "t")) as leases:
        assert len(leases) == 2
        with pytest.raises(LeaseHeld, match="transfer study shared-baseline"):
            with held_leases(engine, _studies("other", "shared-baseline")):
                pass
        # The refused run released what it had taken ("other") before failing.
        with held_leases(engine, _studies("other")):
            pass
    with engine.begin() as conn:  # every row freed (rows stay: their fences only grow)
        assert {t for (t,) in conn.execute(sa.select(lease_mod._leases.c.token))} == {FREE}


def test_every_taking_raises_the_fence_and_a_release_keeps_the_row(engine):
    """The fence only grows: an acquisition, a take-over and a re-acquisition after release
    each get the next number, so a driver holding an old one can never match the row."""
    with Lease(engine, "k", "sweep") as first:
        assert first.fence == 1 and _row(engine, "k").fence == 1
    row = _row(engine, "k")
    assert row.token == FREE and row.fence == 1  # released: free, its number kept
    with Lease(engine, "k", "sweep") as second:
        assert second.fence == 2
    _holder_row(engine, "dead", pid=_dead_pid(), host=socket.gethostname(),
                heartbeat=_db_time(engine))
    with Lease(engine, "dead", "sweep") as taken:  # taken over from a holder at fence 0
        row = _row(engine, "dead")
        assert taken.fence == row.fence == 1 and row.token == taken.token


def test_a_lease_table_from_before_fencing_gains_its_column(engine):
    """A database whose lease table predates fencing: the column is added, its rows at 0."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {lease_mod.TABLE} (key VARCHAR(512) PRIMARY KEY, "
                             "token VARCHAR(64) NOT NULL, host VARCHAR(255) NOT NULL, "
                             "pid INTEGER NOT NULL, pid_start VARCHAR(32) NOT NULL, "
                             "heartbeat FLOAT NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {lease_mod.TABLE} VALUES "
                             "('k', 'old', 'elsewhere', 1, '', 0)"))
    with Lease(engine, "k", "sweep") as taken:  # a heartbeat at 0 is long stale
        assert taken.fence == 1
    assert _row(engine, "k").token == FREE


def _start_holder(url: str, key: str, skew: float) -> subprocess.Popen:
    """A live holder in another process whose clock is ``skew`` seconds off, beating every
    0.2 s; returns once it holds the lease."""
    holder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("lease_holder.py")), url, key,
         str(skew), "0.2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = holder.stdout.readline()  # blocks until it holds (or has died)
    assert line.startswith("held "), line
    return holder


def _skew_local_clock(monkeypatch, skew: float) -> None:
    """This process's clock, as the lease module reads it, ``skew`` seconds off."""
    real = time.time
    monkeypatch.setattr(lease_mod.time, "time", lambda: real() + skew)


@pytest.mark.slow
@pytest.mark.parametrize("holder_skew, contender_skew", [(3600.0, -3600.0), (-3600.0, 3600.0)],
                         ids=["holder-ahead", "holder-behind"])
def test_staleness_is_judged_on_the_database_clock_whatever_the_hosts_say(
        engine, monkeypatch, holder_skew, contender_skew):
    """A holder whose clock ran ahead used to block every other driver for an hour after it
    hung; one whose clock lagged was taken over while alive. On the database's clock, the
    outcome is the one a right clock gives: a live holder is refused, a stalled one is taken
    over once its heartbeat is older than STALE_S, and not before."""
    url = engine.url.render_as_string(hide_password=False)
    holder = _start_holder(url, "k", holder_skew)
    try:
        _skew_local_clock(monkeypatch, contender_skew)
        monkeypatch.setattr(lease_mod, "STALE_S", 30.0)  # well below the hour of skew
        with pytest.raises(LeaseHeld) as refused:
            Lease(engine, "k", "sweep").acquire()
        assert "pid " in str(refused.value)
        ago = float(str(refused.value).split("heartbeat ")[1].split(" s ago")[0])
        assert ago < 30.0  # the heartbeat's age on one clock, not the hour between the two

        holder.stdin.write("stall\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "stalled"
        last_beat = _row(engine, "k").heartbeat
        monkeypatch.setattr(lease_mod, "STALE_S", 2.0)
        taken: list[Lease] = []

        def take() -> bool:
            try:
                lease = Lease(engine, "k", "sweep")
                lease.acquire()
            except LeaseHeld:
                return False
            taken.append(lease)
            return True

        _wait_for(take, "the stalled holder to be taken over", every=0.2)
        assert _db_time(engine) - last_beat >= lease_mod.STALE_S  # not before it was stale
        assert _row(engine, "k").token == taken[0].token
        taken[0].release()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def _study(url: str) -> optuna.Study:
    return optuna.create_study(study_name="fenced", storage=url, direction="maximize")


def _record(ray_id: str) -> st.TrialRecord:
    history = [{"epoch": 1, "val_top1": 0.5, "wall_time": 1.0}]
    return st.TrialRecord(ray_trial_id=ray_id, params={"alpha": 0.1, "beta": 0.1, "sigma": 1.0},
                          history=history, status="completed")


def _contents(engine, request) -> str:
    """Every row of the database: equal, the database is unchanged."""
    if engine.dialect.name == "sqlite":
        from dbstate import sqlite_digest

        return sqlite_digest(engine.url.render_as_string(hide_password=False))
    return request.getfixturevalue("postgres").dump(engine.url.database)


def test_a_driver_that_was_taken_over_records_nothing(engine, monkeypatch, request):
    """Driver A hangs past STALE_S, B takes the sweep over; A's recorder, fenced by A's
    lease, refuses to write (LeaseLost, A told to stop) and leaves the study as it was."""
    from spaces import default_space

    url = engine.url.render_as_string(hide_password=False)
    _study(url)
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 3600.0)  # A never renews: it has hung
    monkeypatch.setattr(lease_mod, "STALE_S", 0.5)
    told: list[str] = []
    first = Lease(engine, "sweep:fenced:1", "sweep 1", on_lost=told.append)
    first.acquire()
    space = default_space("weight_mirror")
    ours = Recorder(url, "fenced", space, "exp-a", fence=first.check)
    assert ours.record([_record("t0")]) == 1  # held: it writes
    second = Lease(engine, "sweep:fenced:1", "sweep 1")

    def take() -> bool:
        try:
            second.acquire()
        except LeaseHeld:
            return False
        return True

    _wait_for(take, "the second driver to take over", every=0.1)
    assert second.fence == first.fence + 1
    before = _contents(engine, request)
    with pytest.raises(LeaseLost, match="another driver took over"):
        ours.record([_record("t1")])
    assert _contents(engine, request) == before
    assert told and "records nothing more" in told[0]
    theirs = Recorder(url, "fenced", space, "exp-b", fence=fence_of([second]))
    assert theirs.record([_record("t1")]) == 1  # the new holder writes
    assert [t.user_attrs["ray_trial_id"] for t in optuna.load_study(
        study_name="fenced", storage=url).trials] == ["exp-a/t0", "exp-b/t1"]
    first.release()  # leaves the new holder's row alone
    assert _row(engine, "sweep:fenced:1").token == second.token
    second.release()


def test_a_fenced_recorder_pickles_without_its_fence(engine):
    import pickle

    from spaces import default_space

    url = engine.url.render_as_string(hide_password=False)
    with Lease(engine, "k", "sweep") as held:
        recorder = Recorder(url, "fenced", default_space("weight_mirror"), "e",
                            fence=held.check)
        copy = pickle.loads(pickle.dumps(recorder))
    assert copy.fence is None and copy.storage_url is None


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
    def one_recorded() -> bool:
        assert sweep.poll() is None, sweep.stdout.read()  # still running at the kill point
        try:
            return len(optuna.load_study(study_name=name, storage=url).trials) >= 1
        except KeyError:
            return False

    _wait_for(one_recorded, "the sweep's first recorded trial", timeout=300, every=0.2)
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
