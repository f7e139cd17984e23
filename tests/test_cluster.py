"""A real two-node Ray cluster on this machine (``ray start --head`` + ``ray start --address``),
driven by the CLI with ``--address`` exactly as a user would drive a cluster of GPU machines."""

import json
from collections import Counter
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from procs import cli, free_port, kill_ray_of

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head and second node with one CPU each and their own custom resource, with token
    authentication from a file, as docker-compose.yml runs them."""
    ray_tmp = f"/tmp/csn{os.getpid()}"
    token = tmp_path_factory.mktemp("auth") / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={address.split(':')[1]}",
                        "--include-dashboard=false", '--resources={"head_node": 1}', *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={address}",
                        '--resources={"second_node": 1}', *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield address, env
    finally:
        kill_ray_of(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _probe(address: str, env: dict) -> subprocess.CompletedProcess:
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % address)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


def _node_ids(address: str, env: dict) -> set[str]:
    done = _probe(address, env)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=400)


def test_sweep_and_transfer_on_a_two_node_cluster(cluster, tmp_path):
    address, env = cluster
    env = {**env, "CREDITSWEEP_RAY_DIR": str(tmp_path / "ray")}
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    nodes = _node_ids(address, env)
    assert len(nodes) == 2
    # Token authentication is on: a driver without the token is turned away.
    stranger = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = _probe(address, {**stranger, "HOME": str(tmp_path)})
    assert refused.returncode != 0 and "token" in refused.stderr.lower(), refused.stderr[-2000:]
    # One CPU per node and two concurrent one-CPU trials: Ray must use both nodes.
    done = _cli(env, "sweep", "--address", address, "--rule", "weight_mirror", "--arch", "mlp",
                "--epochs", "1", "--trials", "4", "--max-concurrent", "2", "--study", "wm",
                "--storage", url)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="wm", storage=url).trials
    assert len(trials) == 4 and len({t.user_attrs["ray_trial_id"] for t in trials}) == 4
    assert {t.user_attrs["node_id"] for t in trials} == nodes
    # No GPU was reserved, so every trial trained on the CPU with no GPU assigned.
    assert {(t.user_attrs["device"], t.user_attrs["gpus"]) for t in trials} == {("cpu", "")}
    print(f"\ncluster: {len(trials)} trials, per node "
          f"{sorted(Counter(t.user_attrs['node_id'][:8] for t in trials).values())}")
    # The rest of the CLI works against the cluster as it does locally.
    assert _cli(env, "best", "--study", "wm", "--storage", url).returncode == 0
    again = _cli(env, "resume", "--address", address, "--study", "wm", "--storage", url)
    assert again.returncode == 0 and "nothing to resume" in again.stderr
    moved = _cli(env, "transfer", "--address", address, "--rule", "weight_mirror",
                 "--defaults", "--targets", "mlp", "--seeds", "2", "--epochs", "1",
                 "--storage", url)
    assert moved.returncode == 0, moved.stderr[-3000:]
    transfer = optuna.load_study(study_name="transfer.weight_mirror.defaults.digits",
                                 storage=url).trials
    assert len(transfer) == 4 and {t.user_attrs["node_id"] for t in transfer} <= nodes
    # Asking for what the cluster does not have is the same one-line error as locally.
    short = _cli(env, "sweep", "--address", address, "--gpus-per-trial", "1", "--arch", "mlp",
                 "--trials", "1", "--storage", url)
    assert short.returncode == 2
    assert short.stderr.strip().splitlines()[-1] == (
        "creditsweep: error: each trial asks for 1 GPU(s) but the Ray cluster has 0")
