#!/usr/bin/env bash
# Runs the whole test suite. PostgreSQL: CRM_SYNC_TEST_ADMIN_URL (a URL, or `embedded`), else the
# local server (127.0.0.1:5432, user postgres) if it answers, else an embedded one started for
# the run and deleted at its end (tests/conftest.py); a line before the first test says which.
# A run of tests that need no database (`-m 'not db'`, or `tests/test_plan.py`) looks for none.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
source "$root/scripts/venv.sh"
cd "$root"
exec python -m pytest -q "$@"
