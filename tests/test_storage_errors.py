"""Database errors classified by their type and codes, each produced for real: a SQLite lock
held by another connection, a file that is not a database, a PostgreSQL server that refuses
a password, a table created twice, a port nobody listens on."""

import sqlite3

import pytest
import sqlalchemy
from sqlalchemy import exc as sa

from search.storage import classify


def _error(engine_url: str, statement: str, **connect_args) -> BaseException:
    engine = sqlalchemy.create_engine(engine_url, connect_args=connect_args)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(statement))
    except sa.SQLAlchemyError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the statement did not fail")


def test_sqlite_lock_is_transient_and_a_non_database_is_usage(tmp_path):
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        busy = _error(f"sqlite:///{path}", "INSERT INTO t VALUES (1)", timeout=0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert classify(busy) == "transient"
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    assert classify(_error(f"sqlite:///{tmp_path / 'junk.db'}", "SELECT 1 FROM t")) == "usage"


def test_postgres_errors(postgres):
    url = postgres.create_database("classify")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE studies (x int)"))
    engine.dispose()
    # Two drivers creating the same tables: the second sees them made; a retry succeeds.
    assert classify(_error(url, "CREATE TABLE studies (x int)"), url) == "transient"
    assert classify(_error(url, "SELECT * FROM no_such_table"), url) == "usage"
    refused = url.replace(f":{postgres.port}/", ":1/")
    assert classify(_error(refused, "SELECT 1"), refused) == "transient"
    missing = url.rsplit("/", 1)[0] + "/no_such_database"
    assert classify(_error(missing, "SELECT 1"), missing) == "usage"  # the server answered


@pytest.mark.parametrize("error,kind", [
    (ImportError("no driver"), "usage"), (sa.ArgumentError("bad url"), "usage"),
    (TimeoutError(), "transient"), (ZeroDivisionError(), "other")])
def test_errors_without_a_database_behind_them(error, kind):
    assert classify(error) == kind
