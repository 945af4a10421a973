#!/usr/bin/env bash
# Make the pgvector extension available to the local PostgreSQL (what the PostgreSQL store's library-wide search
# uses, and what its tests exercise). Idempotent and quiet: prints nothing and does nothing when PostgreSQL is
# not reachable or `vector` is already available. Otherwise builds the vendored release
# (../shared/vendor/pgvector-0.8.6.tar.gz, PostgreSQL licence) with OPTFLAGS="" so the binary is portable, and
# installs it into this host's PostgreSQL. Installing needs root (apt-get for the server headers, `make install`
# into PostgreSQL's directories): as root it runs the commands itself, otherwise through passwordless sudo.
# Where it cannot (no root and no `sudo -n`, no apt-get for missing headers, no compiler, a failed build) it says
# why on stderr and exits 0: the suite still runs, and the pgvector tests skip with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
export PGHOST PGPORT PGUSER
SRC="${PGVECTOR_TARBALL:-../shared/vendor/pgvector-0.8.6.tar.gz}"

skip() {
  echo "pgvector: $*; library search on PostgreSQL falls back to a FAISS file and the pgvector tests skip" >&2
  exit 0
}

command -v psql >/dev/null 2>&1 || exit 0
psql -d postgres -tAc "SELECT 1" >/dev/null 2>&1 || exit 0
if [ "$(psql -d postgres -tAc "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")" = "1" ]; then
  exit 0
fi
[ -f "$SRC" ] || skip "$SRC not found"

# Who may install: root runs the commands itself; anyone else needs passwordless sudo (never a prompt).
if [ "$(id -u)" = "0" ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  skip "not root and no passwordless sudo, cannot install the extension"
fi
command -v make >/dev/null 2>&1 || skip "make is not installed"
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || skip "no C compiler (cc/gcc)"

# The build needs the server's headers (postgresql-server-dev-<major> of the server that answers).
major="$(psql -d postgres -tAc "SHOW server_version_num" | cut -c1-2)"
pg_config="/usr/lib/postgresql/$major/bin/pg_config"
[ -x "$pg_config" ] || pg_config="$(command -v pg_config || true)"
if [ -z "$pg_config" ] || [ ! -f "$("$pg_config" --includedir-server 2>/dev/null)/postgres.h" ]; then
  command -v apt-get >/dev/null 2>&1 || skip "the PostgreSQL $major server headers are missing and there is no apt-get"
  echo "pgvector: installing postgresql-server-dev-$major" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${as_root[@]}" apt-get install -y -qq "postgresql-server-dev-$major" >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 || true
    "${as_root[@]}" apt-get install -y -qq "postgresql-server-dev-$major" >/dev/null 2>&1 \
      || skip "apt-get could not install postgresql-server-dev-$major"
  fi
  pg_config="/usr/lib/postgresql/$major/bin/pg_config"
  [ -x "$pg_config" ] || pg_config="$(command -v pg_config || true)"
  [ -n "$pg_config" ] || skip "pg_config not found after installing the headers"
fi

echo "pgvector: building $(basename "$SRC") for PostgreSQL $major (about a minute)" >&2
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar xzf "$SRC" -C "$build"
dir="$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
if ! make -s -C "$dir" PG_CONFIG="$pg_config" OPTFLAGS="" >"$build/make.log" 2>&1; then
  tail -n 20 "$build/make.log" >&2
  skip "the build failed (above)"
fi
if ! "${as_root[@]}" make -s -C "$dir" PG_CONFIG="$pg_config" install >"$build/install.log" 2>&1; then
  tail -n 20 "$build/install.log" >&2
  skip "make install failed (above)"
fi
echo "pgvector: installed" >&2
