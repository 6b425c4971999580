#!/usr/bin/env bash
# Runs the whole test suite against the local PostgreSQL (127.0.0.1:5432, user postgres).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
source "$root/scripts/venv.sh"
cd "$root"
exec python -m pytest -q "$@"
