#!/usr/bin/env bash
# The worker end to end on the local stack: a throw-away Supabase-compatible sandbox with a
# demo CRM (about 50 sale rows), then crm-sync as an operator would run it. Everything the
# sandbox created is dropped when this script ends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
source "$root/scripts/venv.sh"

work="$(mktemp -d)"
sandbox_pid=""
cleanup() {
  if [ -n "$sandbox_pid" ] && kill -0 "$sandbox_pid" 2>/dev/null; then
    kill -TERM "$sandbox_pid"
    wait "$sandbox_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the local stack (sandbox: Auth + REST + SMTP sink, demo CRM)"
python -m supabase_sandbox serve --demo-data --mail-dir "$work/mail" >"$work/env" 2>"$work/sandbox.log" &
sandbox_pid=$!
for _ in $(seq 1 300); do
  grep -q '^SMTP_PORT=' "$work/env" 2>/dev/null && break
  kill -0 "$sandbox_pid" 2>/dev/null || { cat "$work/sandbox.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^SMTP_PORT=' "$work/env" || { echo "the sandbox did not start" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
source "$work/env"
set +a
sed -E 's/(KEY=).{12}.*/\1<hidden>/; s#(://[^:]*:)[^@]*@#\1***@#' "$work/env"

# The live CRM's column names, a real SMTP conversation with the sink, no health server.
export CRM_ELIGIBILITY_COLUMN=digital_resume_sale_value CRM_NAME_COLUMN=lead_name CRM_ID_COLUMN=lead_id
export APP_LOGIN_URL=https://careercast.example.com/login
export EMAIL_BACKEND=smtp EMAIL_FROM="ApplyWizz <no-reply@applywizz.example>" SMTP_SECURITY=none
export HEALTH_PORT=0 LOG_LEVEL=WARNING LOG_FORMAT=console

step "crm-sync migrate (the sandbox already applied the schema: nothing to do)"
crm-sync migrate

step "crm-sync --once --dry-run (read and plan, write nothing)"
crm-sync --once --dry-run

step "crm-sync --once"
set +e
crm-sync --once
code=$?
set -e
echo "exit code: $code"

step "Emails captured by the SMTP sink"
ls "$work/mail" | wc -l | xargs echo "messages:"
python - "$work/mail" <<'PY'
import email, email.policy, pathlib, re, sys
from supabase import create_client
import os

messages = sorted(pathlib.Path(sys.argv[1]).glob("*.eml"))
parsed = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in messages]
new = [m for m in parsed if "ready" in m["Subject"]]
linked = [m for m in parsed if "added" in m["Subject"]]
print(f"new-account emails: {len(new)}, credits-added emails: {len(linked)}")
first = new[0]
text = first.get_body(preferencelist=("plain",)).get_content()
password = re.search(r"Temporary password:\s*(\S+)", text).group(1)
print(f"\n--- one of them, in full (its password masked here) ---")
print(f"From: {first['From']}\nTo: {first['To']}\nSubject: {first['Subject']}\n")
print(text.replace(password, "*" * len(password)))
client = create_client(os.environ["SUPABASE_URL"], os.environ["SUPABASE_ANON_KEY"])
address = first["To"].addresses[0].addr_spec
session = client.auth.sign_in_with_password({"email": address, "password": password})
print(f"--- the emailed password signs in: user {session.user.id} ({session.user.email}) ---")
PY

step "crm-sync --once again: everyone is done, so nothing happens"
crm-sync --once

step "What the database says (the seed's monitoring queries)"
python - <<'PY'
import os, psycopg
with psycopg.connect(os.environ["SUPABASE_DB_URL"]) as conn:
    for view in ("crm_user_count", "crm_data_distribution", "crm_credit_distribution"):
        cur = conn.execute(f"select * from public.{view}")
        print(view, [d.name for d in cur.description], cur.fetchall())
PY
