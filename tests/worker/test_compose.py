"""docker-compose.yml and the Dockerfile, checked structurally (no Docker engine runs here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pmcqa.core.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_profiles(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"api", "worker", "postgres", "minio", "vllm"}
    assert services["vllm"]["profiles"] == ["vllm"]
    assert all("profiles" not in services[name] for name in ("api", "worker", "postgres", "minio"))  # default
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")  # PostgreSQL with the extension
    assert services["vllm"]["image"].startswith("vllm/vllm-openai:")
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["api"]["command"][:2] == ["pmcqa", "serve"]
    assert services["worker"]["command"][:2] == ["pmcqa", "worker"]
    assert services["api"]["ports"] and services["api"]["build"] == "."


def test_no_container_shares_a_file(compose: dict) -> None:
    """`--scale api=2 --scale worker=3` needs no shared volume: state is in PostgreSQL and MinIO; the only
    volume api and worker mount is the model cache."""
    assert {"postgres-data", "minio-data", "hf-cache", "pmcqa-models"} <= set(compose["volumes"])
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert [v.split(":")[0] for v in service["volumes"]] == ["pmcqa-models"], name
        env = service["environment"]
        assert env["PMCQA_DATA_DIR"] == "/data"  # the container's own scratch space
        assert (
            env["PMCQA_DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["PMCQA_DATABASE_URL"]
        )
        assert (
            env["PMCQA_RAW_STORE"].startswith("s3://") and env["PMCQA_S3_ENDPOINT_URL"] == "http://minio:9000"
        )
        assert "PMCQA_REDIS_URL" not in env  # the queue and the NCBI limit are in PostgreSQL too
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    port = compose["services"]["api"]["ports"][0]
    assert re.fullmatch(r"\$\{PMCQA_PORT:-8080\}-\$\{PMCQA_PORT_LAST:-\d+\}:8080", port), port  # replicas


def test_healthchecks(compose: dict) -> None:
    services = compose["services"]
    for name in services:
        assert "test" in services[name]["healthcheck"], name
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert ":8000/health" in " ".join(services["vllm"]["healthcheck"]["test"])


def test_env_wiring(compose: dict) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]  # MinIO's credentials
    api = services["api"]["environment"]
    assert api["PMCQA_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    assert "PMCQA_ANSWER_BACKEND" in api and "openai" not in api["PMCQA_ANSWER_BACKEND"]  # opt-in
    served = services["vllm"]["command"]
    assert served[served.index("--served-model-name") + 1] == api["PMCQA_OPENAI_MODEL"]
    assert served[served.index("--port") + 1] == "8000"


def test_depends_on(compose: dict) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        for needed in ("postgres", "minio"):
            assert services[name]["depends_on"][needed]["condition"] == "service_healthy", (name, needed)
    vllm = services["api"]["depends_on"]["vllm"]
    assert vllm["condition"] == "service_healthy" and vllm["required"] is False  # profile off → not needed


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    # torch at constraints.txt's pin, from the CPU index unless the TORCH_INDEX_URL build arg says otherwise
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()
    assert "COPY constraints.txt" in text
    assert 'pip install --index-url "$TORCH_INDEX_URL" -c constraints.txt torch' in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "\nUSER pmcqa" in text and 'CMD ["pmcqa", "serve"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored) and "constraints.txt" not in ignored


def dockerfile_arg(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith(f"ARG {name}=")]
    return line.split("=", 1)[1]


def test_the_default_image_has_no_llm_stack() -> None:
    """The extractive default image installs the extras PMCQA_EXTRAS names; llm is opt-in (a build arg)."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install -c constraints.txt ".${PMCQA_EXTRAS:+[$PMCQA_EXTRAS]}"' in text  # `.` when empty
    extras = set(dockerfile_arg("PMCQA_EXTRAS").split(","))
    assert "llm" not in extras
    # what the compose file uses: the Redis queue, the vLLM profile, and the networked store (PostgreSQL, S3)
    assert extras == {"openai", "redis", "postgres", "s3"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras | {"llm"} <= set(declared)


def test_worker_stops_gracefully_and_checks_itself(compose: dict) -> None:
    worker = compose["services"]["worker"]
    grace = re.fullmatch(r"(\d+)(m|s)", worker["stop_grace_period"])
    assert grace
    seconds = int(grace[1]) * (60 if grace[2] == "m" else 1)
    # longer than a batch: 25 papers embed in ~2 min on 2 CPU cores, plus up to 3 min of NCBI retries
    settings = Settings()
    assert seconds > settings.ncbi_max_tries * settings.ncbi_timeout_s + 120
    assert worker["healthcheck"]["test"] == ["CMD", "pmcqa", "worker", "--check"]  # the worker, not Redis
    assert "start_period" in worker["healthcheck"]


def test_model_caches_live_on_a_volume(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (hf_home,) = re.findall(r"HF_HOME=(\S+)", dockerfile)
    volume_root = "/" + hf_home.strip("/").split("/")[0]
    assert f'VOLUME ["/data", "{volume_root}"]' in dockerfile
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert service["environment"]["HF_HOME"] == hf_home
        mounts = dict(volume.split(":") for volume in service["volumes"])
        assert mounts.get("pmcqa-models") == volume_root and "pmcqa-models" in compose["volumes"]
    assert "hf-cache:/root/.cache/huggingface" in compose["services"]["vllm"]["volumes"]


def test_vllm_image_is_pinned_to_a_release(compose: dict) -> None:
    image = compose["services"]["vllm"]["image"]
    tag = re.fullmatch(r"vllm/vllm-openai:\$\{VLLM_VERSION:-v(\d+)\.(\d+)\.(\d+)\}", image)
    assert tag, image  # a release, overridable, never `latest`
    assert tuple(map(int, tag.groups())) >= (0, 33, 0)  # the release current when this was written
