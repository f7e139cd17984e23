"""A real PostgreSQL server for the tests: initdb + pg_ctl on 127.0.0.1, torn down after.

As root, initdb and pg_ctl refuse to run, so they run as the ``postgres`` user on a data folder
it owns. The server trusts loopback connections; URLs may still carry a password (ignored by
the server) so that the tests can check it is never printed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from procs import free_port


def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    return found


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


class PostgresServer:
    def __init__(self, password: str | None = None) -> None:
        """With ``password``, the server checks it (scram-sha-256) instead of trusting all."""
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="csweep-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.user = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")

    def _run(self, *args: str) -> str:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {**os.environ, "PGPASSWORD": self.password} if self.password else None
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60,
                              env=env).stdout

    def start(self) -> "PostgresServer":
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o755)
        auth = ["-A", "trust"]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password)
            if self.as_postgres:
                shutil.chown(pwfile, "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        self._run(_bin("initdb"), "-D", str(self.data), *auth, "-U", self.user, "--no-sync")
        self.resume()
        return self

    def create_database(self, name: str) -> str:
        self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                  name)
        return self.url(name)

    def dump(self, database: str) -> str:
        """Every row of the database as pg_dump prints it: equal dumps, unchanged database."""
        text = self._run(_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                         self.user, "--data-only", database)
        # pg_dump fences its output with a random \restrict key: not data, so left out.
        return "\n".join(ln for ln in text.splitlines()
                         if not ln.startswith(("\\restrict", "\\unrestrict")))

    def url(self, database: str, password: str = "s3cret-pw") -> str:
        return f"postgresql+psycopg://{self.user}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (dropping every connection) but keep its data, to start it again."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def resume(self) -> None:
        """Start the server on its port (again)."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l",
                  str(self.root / "log"), "start")
