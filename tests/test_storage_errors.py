"""Database errors classified by their type and codes, each produced for real: a SQLite lock
held by another connection, a file that is not a database, a PostgreSQL server that refuses
a password, a table created twice, a port nobody listens on; and the timeouts that bound
every database call, against a real lock, a real server and a host that never answers."""

import socket
import sqlite3
import time

import pytest
import sqlalchemy
from sqlalchemy import exc as sa

from catalogue.errors import StorageUnavailable
from search.storage import (CONNECT_TIMEOUT_S, RetryPolicy, classify, connect_args,
                            open_storage)


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


@pytest.mark.slow
def test_a_host_that_accepts_and_never_answers_fails_within_the_connect_timeout():
    silent = socket.socket()  # the kernel completes the handshake; nobody ever speaks
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"postgresql+psycopg://u:pw@127.0.0.1:{silent.getsockname()[1]}/db"
    try:
        assert connect_args(sqlalchemy.engine.make_url(url))["connect_timeout"] == \
            CONNECT_TIMEOUT_S  # the default every command gets
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="unreachable.*timeout") as caught:
            open_storage(url + "?connect_timeout=1", policy=RetryPolicy(attempts=2))
        assert time.monotonic() - started < 12  # before: it waited forever
        assert "pw" not in str(caught.value).replace("psycopg", "")
    finally:
        silent.close()


def test_sqlite_writes_wait_out_a_busy_lock_for_the_busy_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = open_storage(url)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    storage.engine.dispose()
    short = open_storage(url + "?timeout=1")  # the URL's own setting wins
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(sa.OperationalError) as caught, short.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM studies")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.9 < time.monotonic() - started < 10
    assert classify(caught.value) == "transient"


def test_postgres_sessions_carry_a_statement_timeout(postgres):
    url = postgres.create_database("timeouts")
    storage = open_storage(url)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "2min"
        with pytest.raises(sa.OperationalError) as caught:
            conn.exec_driver_sql("SET statement_timeout = 200")
            conn.exec_driver_sql("SELECT pg_sleep(5)")
    assert classify(caught.value, url) == "transient"  # 57014, cancelled: worth a retry
    storage.engine.dispose()
