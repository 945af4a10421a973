# pmcqa: API + worker image (CPU). `docker compose up` runs it as both; see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PMCQA_DATA_DIR=/data \
    PMCQA_HOST=0.0.0.0 \
    PMCQA_PORT=8080

WORKDIR /app

# torch first, from the CPU wheel index and at the project's pin: an unpinned resolve from PyPI would pull the
# multi-GB CUDA build. This layer only changes when the pin does.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# Dependencies before sources, so editing code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p pmcqa && touch pmcqa/__init__.py \
    && pip install . && pip uninstall -y pmcqa

COPY pmcqa ./pmcqa
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 pmcqa \
    && mkdir -p /data && chown pmcqa:pmcqa /data

USER pmcqa
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"

# On embedded defaults this starts the API and a worker process together (SQLite queue under /data).
CMD ["pmcqa", "serve"]
