"""Schema versions of creditsweep's own tables, and the migrations between them.

Optuna versions its tables itself (alembic revisions, checked by ``engine._check_schema``) and
they are left alone. The tables creditsweep keeps beside them (the lease table) had no version,
so a change to them could only be guessed from their columns. Each set of them is now a
``Schema``: a row in ``creditsweep_schema`` (name, version) says which version a database holds,
written in the transaction that creates the tables. ``ensure`` brings a database to this
code's version: tables that are absent are created at it; older ones are migrated one step at a
time (version n to n + 1, each step a function), all steps and the new version number in one
transaction, so that a failed step leaves the database as it was (SQLite and PostgreSQL roll
DDL back; MySQL does not); tables of a newer version than this code knows are refused, with the
database unchanged, as ``EnvironmentProblem`` (exit 4). Migrators are serialized by a lock on
the version table, so two drivers upgrading one database at once migrate it once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import sqlalchemy as sa

from catalogue.errors import EnvironmentProblem
from search.urls import redact

TABLE = "creditsweep_schema"

log = logging.getLogger(__name__)
_metadata = sa.MetaData()
_versions = sa.Table(
    TABLE, _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

Migration = Callable[[sa.Connection], None]  # one step, on a connection inside the transaction


@dataclass(frozen=True)
class Schema:
    """One set of creditsweep's tables: ``metadata`` holds them as this code makes them
    (version ``len(migrations) + 1``); ``migrations[i]`` takes version ``i + 1`` to ``i + 2``.
    ``unversioned`` says which version tables made before versions were recorded are at
    (None when there are none of them), judged from what the database holds."""

    name: str
    metadata: sa.MetaData
    migrations: Sequence[Migration] = ()
    unversioned: Callable[[sa.Connection], int | None] = lambda conn: None

    @property
    def version(self) -> int:
        return len(self.migrations) + 1


def ensure(engine: sa.engine.Engine, schema: Schema) -> int:
    """Bring ``schema``'s tables to this code's version (created, or migrated); returns the
    version the database held before (this code's own when it held none). Raises
    ``EnvironmentProblem``, having changed nothing, when the database's is newer."""
    found = recorded_version(engine, schema.name)
    if found == schema.version:  # the usual case: one read, no write, no lock
        return found
    if found is not None:
        _refuse_newer(engine, schema, found)
    _create_version_table(engine)
    for attempt in range(3):
        try:
            return _upgrade(engine, schema)
        except sa.exc.IntegrityError:  # another driver recorded the version first (a
            if attempt == 2:             # dialect without the lock): read it again
                raise
    raise AssertionError("unreachable")


def recorded_version(engine: sa.engine.Engine, name: str) -> int | None:
    """The version the database records for the schema ``name``; None when it records none."""
    if not sa.inspect(engine).has_table(TABLE):
        return None
    with engine.connect() as conn:
        return conn.scalar(sa.select(_versions.c.version).where(_versions.c.name == name))


def _refuse_newer(engine: sa.engine.Engine, schema: Schema, found: int) -> None:
    if found > schema.version:
        url = redact(engine.url.render_as_string(hide_password=False))
        raise EnvironmentProblem(
            f"storage {url} holds creditsweep's {schema.name} tables at schema version "
            f"{found}, newer than this creditsweep knows ({schema.version}): a newer "
            f"creditsweep wrote them; upgrade creditsweep, or use another database")


def _create_version_table(engine: sa.engine.Engine) -> None:
    """Create the version table once; two drivers creating it at once is not an error."""
    try:
        _metadata.create_all(engine, checkfirst=True)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        if not sa.inspect(engine).has_table(TABLE):
            raise


def _lock(conn: sa.Connection) -> None:
    """Hold the version table until the transaction ends, so that one migrator at a time
    reads the version and acts on it. SQLite: a write takes the database's write lock (and
    makes the driver begin the transaction, so that the DDL after it is in it too)."""
    if conn.dialect.name == "postgresql":  # conflicts with itself, lets plain reads through
        conn.execute(sa.text(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE"))
    else:
        conn.execute(_versions.update().values(version=_versions.c.version))


def _upgrade(engine: sa.engine.Engine, schema: Schema) -> int:
    """Under the lock: create or migrate, and record the version, in one transaction."""
    with engine.begin() as conn:
        _lock(conn)
        found = conn.scalar(sa.select(_versions.c.version)
                            .where(_versions.c.name == schema.name))
        if found is None:  # nothing recorded: tables from before versions, or none at all
            found = schema.unversioned(conn)
            if found is None:
                schema.metadata.create_all(conn, checkfirst=True)
                found = schema.version
            conn.execute(_versions.insert().values(name=schema.name, version=found))
        _refuse_newer(engine, schema, found)
        for version in range(found, schema.version):
            log.info("migrating creditsweep's %s tables from schema version %d to %d",
                     schema.name, version, version + 1)
            schema.migrations[version - 1](conn)
        if found != schema.version:
            conn.execute(_versions.update().where(_versions.c.name == schema.name)
                         .values(version=schema.version))
    return found
