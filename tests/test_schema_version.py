"""The schema version of creditsweep's own tables (the lease table; Optuna's are Optuna's), on
real SQLite and a real PostgreSQL server: recorded when the tables are made, an older table
migrated when a lease is taken, all steps in one transaction, a newer one refused with the
database unchanged, and concurrent drivers migrating a database once."""

import threading

import pytest
import sqlalchemy as sa

from catalogue.errors import EnvironmentProblem
from search import lease as lease_mod
from search.lease import FREE, Lease
from search.storage import versions

V1_TABLE = (f"CREATE TABLE {lease_mod.TABLE} (key VARCHAR(512) PRIMARY KEY, "
            "token VARCHAR(64) NOT NULL, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, "
            "pid_start VARCHAR(32) NOT NULL, heartbeat FLOAT NOT NULL)")


def _contents(engine, request) -> str:
    """Every table, column and row: equal, the database is unchanged."""
    if engine.dialect.name == "sqlite":
        from dbstate import sqlite_digest

        return sqlite_digest(engine.url.render_as_string(hide_password=False))
    inspector = sa.inspect(engine)
    columns = {t: [c["name"] for c in inspector.get_columns(t)]
               for t in inspector.get_table_names()}
    return f"{columns}\n" + request.getfixturevalue("postgres").dump(engine.url.database)


def _columns(engine) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(lease_mod.TABLE)]


def _v1_database(engine, *, recorded: bool) -> None:
    """A lease table at version 1 (before fencing) with one row, its version recorded in
    ``creditsweep_schema`` or (as every database made before versions) not."""
    with engine.begin() as conn:
        conn.execute(sa.text(V1_TABLE))
        conn.execute(sa.text(f"INSERT INTO {lease_mod.TABLE} VALUES "
                             "('k', 'old', 'elsewhere', 1, '', 0)"))
    if recorded:
        versions._create_version_table(engine)
        with engine.begin() as conn:
            conn.execute(versions._versions.insert().values(name="leases", version=1))


def test_a_fresh_database_records_the_current_version(engine):
    with Lease(engine, "k", "sweep") as taken:
        assert taken.fence == 1
    assert lease_mod.SCHEMA.version == 2
    assert versions.recorded_version(engine, "leases") == lease_mod.SCHEMA.version
    assert "fence" in _columns(engine)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "before-versions"])
def test_a_version_1_lease_table_is_migrated_when_a_lease_is_taken(engine, recorded):
    """Version 1 (no fence column), recorded as such or judged so by its columns: taking a
    lease adds the column (its old row at fence 0) and records version 2."""
    _v1_database(engine, recorded=recorded)
    assert "fence" not in _columns(engine)
    with Lease(engine, "k", "sweep") as taken:  # a heartbeat at 0 is long stale: taken over
        assert taken.fence == 1
    assert versions.recorded_version(engine, "leases") == 2
    assert "fence" in _columns(engine)
    with engine.begin() as conn:
        row = conn.execute(sa.select(lease_mod._leases)).one()
    assert row.key == "k" and row.token == FREE and row.fence == 1


def test_a_fenced_table_from_before_versions_is_recorded_unchanged(engine):
    """A lease table the code before versions made (it has the fence column): recorded as
    version 2, its rows kept, nothing migrated."""
    lease_mod._metadata.create_all(engine)  # the table as that code made it, no version row
    with engine.begin() as conn:
        conn.execute(lease_mod._leases.insert().values(
            key="k", token=FREE, host="h", pid=1, pid_start="", heartbeat=0.0, fence=7))
    assert versions.recorded_version(engine, "leases") is None
    with Lease(engine, "k", "sweep") as taken:
        assert taken.fence == 8
    assert versions.recorded_version(engine, "leases") == 2


def test_a_newer_version_is_refused_in_one_line_with_the_database_unchanged(engine, request):
    """Tables a newer creditsweep wrote (version 3, unknown here): EnvironmentProblem (exit
    4) naming both versions, before anything is written, the password masked."""
    with Lease(engine, "k", "sweep"):
        pass
    with engine.begin() as conn:
        conn.execute(versions._versions.update().values(version=lease_mod.SCHEMA.version + 1))
    before = _contents(engine, request)
    with pytest.raises(EnvironmentProblem) as refused:
        Lease(engine, "k", "sweep").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert "schema version 3" in message and "knows (2)" in message
    assert "upgrade creditsweep" in message
    assert "s3cret-pw" not in message
    assert _contents(engine, request) == before


def test_a_failed_migration_leaves_the_database_as_it_was(engine, request):
    """Every step and the new version in one transaction: a step that fails after its DDL
    rolls back the DDL too (SQLite and PostgreSQL both roll DDL back)."""
    _v1_database(engine, recorded=True)
    before = _contents(engine, request)

    def add_note_then_fail(conn: sa.Connection) -> None:
        conn.execute(sa.text(f"ALTER TABLE {lease_mod.TABLE} ADD COLUMN note VARCHAR(64)"))
        raise RuntimeError("step 2 -> 3 failed")

    broken = versions.Schema("leases", lease_mod._metadata,
                             migrations=(lease_mod._add_fence, add_note_then_fail))
    with pytest.raises(RuntimeError, match="step 2 -> 3 failed"):
        versions.ensure(engine, broken)
    assert _contents(engine, request) == before
    assert versions.recorded_version(engine, "leases") == 1
    assert "fence" not in _columns(engine) and "note" not in _columns(engine)


def test_concurrent_drivers_migrate_once(engine):
    """Four drivers open an old database at once: the version table's lock lets one migrate;
    the others find it migrated, and all go on."""
    _v1_database(engine, recorded=False)
    steps: list[int] = []

    def counted(conn: sa.Connection) -> None:
        steps.append(1)
        lease_mod._add_fence(conn)

    schema = versions.Schema("leases", lease_mod._metadata, migrations=(counted,),
                             unversioned=lease_mod._unversioned)
    barrier = threading.Barrier(4)
    found: list[int] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            found.append(versions.ensure(engine, schema))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert steps == [1]
    assert sorted(found)[0] == 1 and found.count(1) == 1  # one saw version 1; the rest 2
    assert versions.recorded_version(engine, "leases") == 2 and "fence" in _columns(engine)
