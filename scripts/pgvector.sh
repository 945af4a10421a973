#!/usr/bin/env bash
# Make the pgvector extension available to the local PostgreSQL (what the PostgreSQL store's library-wide search
# uses). Idempotent and quiet: does nothing when PostgreSQL is not reachable or `vector` is already available.
# Builds the vendored release (../shared/vendor/pgvector-0.8.6.tar.gz, PostgreSQL licence) with OPTFLAGS=""
# so the binary is portable; needs root for apt-get and `make install` (as on the dev machines and CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
export PGHOST PGPORT PGUSER
SRC="${PGVECTOR_TARBALL:-../shared/vendor/pgvector-0.8.6.tar.gz}"

command -v psql >/dev/null 2>&1 || exit 0
psql -d postgres -tAc "SELECT 1" >/dev/null 2>&1 || exit 0
if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")" = "1" ]; then
  exit 0
fi
if [ ! -f "$SRC" ]; then
  echo "pgvector: $SRC not found; the PostgreSQL store will fall back to exact library search" >&2
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "pgvector: not root, cannot install the extension; library search on PostgreSQL falls back to exact" >&2
  exit 0
fi
echo "pgvector: building $(basename "$SRC") (about a minute)" >&2
if ! command -v pg_config >/dev/null 2>&1 || [ ! -d "$(pg_config --includedir-server 2>/dev/null)" ]; then
  apt-get install -y -qq postgresql-server-dev-15 >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql-server-dev-15 >/dev/null; }
fi
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar xzf "$SRC" -C "$build"
dir="$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
make -s -C "$dir" OPTFLAGS="" >/dev/null 2>&1
make -s -C "$dir" install >/dev/null
echo "pgvector: installed" >&2
