import os
import shutil
import tempfile
import time

import pytest
import torch

# One torch thread in the test process. The tests' models are small, so a second thread gains
# next to nothing on an idle machine; on 2 cores shared with Ray's workers, a CLI subprocess or
# another run, two threads spin-wait for each other (a checkpoint test beside 3 busy processes:
# 7 s with one thread, 43 s with two; the 8 ResNet-18 contract cases: 5-11 s against 60 s).
torch.set_num_threads(1)
# Self-contained Ray: no token written to the home folder, Ray state under a temp folder.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# A test that uses the shared Ray is an end-to-end test: marked slow here whatever its file
# says, so that `-m "not slow"` never waits for a Ray to start.
RAY_FIXTURES = frozenset({"ray_session"})


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def ray_session():
    """One real local Ray (2 CPUs) shared by a module's end-to-end tests: started by the first
    test that asks for it, shut down after the module's last test. The code under test joins
    it (``Execution.connect`` starts a Ray only when none is initialised)."""
    import ray

    if ray.is_initialized():  # left by a test that let the code under test start its own
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="/tmp/csray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_dir(tmp_path, monkeypatch):
    path = tmp_path / "ray"
    monkeypatch.setenv("CREDITSWEEP_RAY_DIR", str(path))
    return path


@pytest.fixture
def cli_env(tmp_path):
    """Environment of a CLI subprocess with its own Ray (short socket paths, its own folders);
    whatever that Ray leaves running is killed afterwards."""
    from procs import kill_ray_of

    ray_tmp = f"/tmp/csf{os.getpid()}-{time.monotonic_ns() % 10**6}"
    env = {**os.environ, "CREDITSWEEP_RAY_DIR": str(tmp_path / "ray"), "RAY_TMPDIR": ray_tmp,
           "PYTHONUNBUFFERED": "1"}
    yield env
    kill_ray_of(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback (.ci/run installs it from Debian's packages)."""
    from postgres import PostgresServer, available

    if not available():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_factory():
    """Fresh PostgreSQL servers of a test's own, for tests that stop and start them."""
    from postgres import PostgresServer, available

    if not available():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    servers = []

    def start(password: str | None = None) -> PostgresServer:
        servers.append(PostgresServer(password).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """A SQLAlchemy engine on a fresh database: a SQLite file, then a database on the test
    PostgreSQL server (the lease and schema-version tests run on both)."""
    import sqlalchemy as sa

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database(f"engine{time.monotonic_ns() % 10**9}")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()
