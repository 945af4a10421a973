#!/usr/bin/env bash
# Create .venv and install pmcqa (editable) with every optional part and its test tools. Idempotent: nothing
# happens while pyproject.toml and constraints.txt are unchanged. constraints.txt pins torch to the CPU build
# on this machine's disk (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/pgvector.sh  # pgvector for the PostgreSQL store's tests and search (no-op when present or no server)
PYTHON="${PYTHON:-python3}"
stamp=".venv/.pmcqa-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[llm,openai,redis,postgres,s3,dev]"
echo "$want" > "$stamp"
