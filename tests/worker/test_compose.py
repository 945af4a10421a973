"""docker-compose.yml and the Dockerfile, checked structurally (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_profiles(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"api", "worker", "redis", "vllm"}
    assert services["vllm"]["profiles"] == ["vllm"]
    assert all("profiles" not in services[name] for name in ("api", "worker", "redis"))  # on by default
    assert services["vllm"]["image"].startswith("vllm/vllm-openai:")
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["api"]["command"][:2] == ["pmcqa", "serve"]
    assert services["worker"]["command"][:2] == ["pmcqa", "worker"]
    assert services["api"]["ports"] and services["api"]["build"] == "."


def test_volumes(compose: dict) -> None:
    assert {"pmcqa-data", "redis-data", "hf-cache"} <= set(compose["volumes"])
    for name in ("api", "worker"):  # the index and the jobs table must be the same files for both
        assert "pmcqa-data:/data" in compose["services"][name]["volumes"]
        assert compose["services"][name]["environment"]["PMCQA_DATA_DIR"] == "/data"
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]


def test_healthchecks(compose: dict) -> None:
    services = compose["services"]
    for name in services:
        assert "test" in services[name]["healthcheck"], name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert ":8000/health" in " ".join(services["vllm"]["healthcheck"]["test"])


def test_env_wiring(compose: dict) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["PMCQA_REDIS_URL"] == "redis://redis:6379/0"  # networked queue + shared NCBI limit
    api = services["api"]["environment"]
    assert api["PMCQA_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    assert "PMCQA_ANSWER_BACKEND" in api and "openai" not in api["PMCQA_ANSWER_BACKEND"]  # opt-in
    served = services["vllm"]["command"]
    assert served[served.index("--served-model-name") + 1] == api["PMCQA_OPENAI_MODEL"]
    assert served[served.index("--port") + 1] == "8000"


def test_depends_on(compose: dict) -> None:
    services = compose["services"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    vllm = services["api"]["depends_on"]["vllm"]
    assert vllm["condition"] == "service_healthy" and vllm["required"] is False  # profile off → not needed


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert 'torch==2.13.0' in text and "download.pytorch.org/whl/cpu" in text
    pin = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"torch==' in line)
    assert pin.strip().strip(",").strip('"') in text  # the image follows the project's pin
    assert "\nUSER pmcqa" in text and 'CMD ["pmcqa", "serve"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)
