"""docker-compose.yml: what it promises, checked by reading it and by Debian's `docker-compose config`.

No Docker engine runs here, so nothing is started: `docker-compose config` validates and
resolves the file (interpolation from the env file included) the way `docker compose up` would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.ci import missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = ("postgres", "dashboard", "ray-head", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _published_ports(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_has_database_dashboard_ray_head_and_workers(compose: dict[str, Any]) -> None:
    assert set(SERVICES) <= set(compose["services"])


def test_every_published_port_listens_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [p for s in compose["services"].values() for p in _published_ports(s)]
    assert published, "the database, dashboard and Ray dashboard are reachable from this host"
    for port in published:
        assert port.startswith("127.0.0.1:"), port


def test_no_password_is_written_in_the_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password in it"
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", str(value)), f"{key}={value}"


def test_postgres_keeps_its_data_in_a_volume_and_reports_health(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") and not v.startswith((".", "/")) for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name in ("dashboard", "ray-head", "worker"):
        assert compose["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dashboard_watches_the_study_database(compose: dict[str, Any]) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["command"][:2] == ["cnnsearch", "dashboard"]
    assert dashboard["environment"]["CNNSEARCH_STORAGE"].startswith("postgresql+psycopg://cnnsearch@postgres:")


def test_workers_and_ray_head_get_gpus_and_workers_can_be_scaled(compose: dict[str, Any]) -> None:
    for name in ("worker", "ray-head"):
        service = compose["services"][name]
        assert service["build"] == "."
        (gpu,) = _gpu_devices(service)
        assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    worker = compose["services"]["worker"]
    assert worker["command"][:2] == ["cnnsearch", "worker"]
    # --scale worker=4 needs replicas that do not collide on a name or a host port.
    assert "container_name" not in worker and "ports" not in worker


def test_env_example_names_every_setting_the_file_reads() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#")}
    assert used <= example
    assert re.search(r"^POSTGRES_PASSWORD=$", ENV_EXAMPLE.read_text(), re.M), "the example holds no password"


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        missing("Debian's docker-compose is not installed; run scripts/install-test-deps.sh")
    return found


def _config(env_file: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([_docker_compose(), "--project-directory", str(ROOT), "-f", str(COMPOSE),
                           "--env-file", str(env_file), "config"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_docker_compose_accepts_the_file_with_the_example_settings(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=s3cret-pw\n"))
    result = _config(env_file)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert set(SERVICES) <= set(resolved)
    for service in resolved.values():
        for port in _published_ports(service):
            assert port.startswith("127.0.0.1:"), port
    assert resolved["worker"]["environment"]["PGPASSWORD"] == "s3cret-pw"
    (gpu,) = _gpu_devices(resolved["worker"])
    assert gpu["device_ids"] == ["0"]


def test_docker_compose_refuses_to_run_without_a_password(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    result = _config(env_file)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env (copy .env.example)" in result.stderr
