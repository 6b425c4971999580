#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists with the project and its test extra
# installed, reinstalling when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CRM_SYNC_VENV:-$root/.venv}"
stamp="$venv/.crm-sync-installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
