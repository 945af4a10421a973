# pmcqa: API + worker image. `docker compose up` runs it as both; see docker-compose.yml.
#
#   docker build -t pmcqa .                          # extractive default: no LLM stack (plus openai, redis)
#   docker build --build-arg PMCQA_EXTRAS=llm,openai,redis,postgres,s3 -t pmcqa:llm .     # adds the transformers backend
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 ...   # a CUDA torch
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PMCQA_DATA_DIR=/data \
    PMCQA_HOST=0.0.0.0 \
    PMCQA_PORT=8080 \
    HF_HOME=/models/huggingface

WORKDIR /app

# torch first, at constraints.txt's version, from the PyTorch index of the build you want (CPU by default):
# resolved from PyPI it would be the multi-GB CUDA build. This layer changes only with the pin or the index.
COPY constraints.txt ./
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" -c constraints.txt torch

# Dependencies before sources, so editing code does not reinstall them (pmcqa/__init__.py holds the version).
# PMCQA_EXTRAS are pyproject's optional parts: openai (the compose file's vLLM profile), redis (its queue),
# postgres and s3 (the networked library: PostgreSQL store, raw XML in a bucket)
# by default; add llm for the transformers backend (transformers, bitsandbytes, peft, accelerate), or set it
# empty for the core alone.
COPY pyproject.toml README.md ./
COPY pmcqa/__init__.py ./pmcqa/__init__.py
ARG PMCQA_EXTRAS=openai,redis,postgres,s3
RUN pip install -c constraints.txt ".${PMCQA_EXTRAS:+[$PMCQA_EXTRAS]}" && pip uninstall -y pmcqa

COPY pmcqa ./pmcqa
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 pmcqa \
    && mkdir -p /data "$HF_HOME" && chown -R pmcqa:pmcqa /data /models

USER pmcqa
# the index and jobs; downloaded models (HF_HOME), so a restart does not fetch them again
VOLUME ["/data", "/models"]
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"

# On embedded defaults this starts the API and a worker process together (SQLite queue under /data).
CMD ["pmcqa", "serve"]
