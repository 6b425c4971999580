#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists with the project and its test extra
# installed, and the local stack (sandbox/) beside it; reinstalls when either pyproject.toml
# changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CRM_SYNC_VENV:-$root/.venv}"
stamp="$venv/.crm-sync-installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] ||
   [ "$root/sandbox/pyproject.toml" -nt "$stamp" ]; then
  echo "installing crm-sync and its test extra into $venv ..." >&2
  log="$(mktemp)"
  if ! { "$venv/bin/python" -m pip install --upgrade pip &&
         "$venv/bin/python" -m pip install -e "$root[test]" -e "$root/sandbox"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
