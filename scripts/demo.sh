#!/usr/bin/env bash
# The worker end to end on the local stack: a throw-away Supabase-compatible sandbox with a
# demo CRM (about 50 sale rows), then crm-sync as an operator would run it. Everything the
# sandbox created is dropped when this script ends.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv.sh
source "$root/scripts/venv.sh"

# PostgreSQL: the server CRM_SYNC_TEST_ADMIN_URL names (a URL, or `embedded`), else the local one
# on 127.0.0.1:5432 if it answers, else an embedded one that the sandbox starts and deletes.
# The line this prints says which.
CRM_SYNC_TEST_ADMIN_URL="$(python -m supabase_sandbox choose-postgres)"
export CRM_SYNC_TEST_ADMIN_URL

work="$(mktemp -d)"
sandbox_pid=""
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
  fi
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
PY

step "That customer signs in with the emailed password, then chooses their own (as the app does)"
python - "$work/mail" <<'PY'
import email, email.policy, os, pathlib, re, sys
from supabase import create_client
from supabase_auth.errors import AuthApiError

messages = sorted(pathlib.Path(sys.argv[1]).glob("*.eml"))
parsed = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in messages]
first = [m for m in parsed if "ready" in m["Subject"]][0]
text = first.get_body(preferencelist=("plain",)).get_content()
temporary = re.search(r"Temporary password:\s*(\S+)", text).group(1)
address = first["To"].addresses[0].addr_spec
chosen = "a passphrase of their own"
url, anon_key = os.environ["SUPABASE_URL"], os.environ["SUPABASE_ANON_KEY"]

app = create_client(url, anon_key)
session = app.auth.sign_in_with_password({"email": address, "password": temporary})
mark = session.user.user_metadata.get("must_change_password")
print(f"signed in with the emailed password: user {session.user.id} ({address})")
print(f"user_metadata.must_change_password = {mark}: the app shows its change-password form")
assert mark is True, "the temporary password is not marked as due for a change"

updated = app.auth.update_user({"password": chosen, "data": {"must_change_password": False}})
print("one updateUser({password, data: {must_change_password: false}}) call (PUT /auth/v1/user):")
print(f"  new password set, must_change_password = {updated.user.user_metadata['must_change_password']}")
app.auth.sign_out()
print("signed out (POST /auth/v1/logout: the session and its refresh token are revoked)")

try:
    create_client(url, anon_key).auth.sign_in_with_password({"email": address, "password": temporary})
except AuthApiError as error:
    print(f"the temporary password no longer works: {error.status} {error.code} ({error.message})")
else:
    sys.exit("the temporary password still signs in")
again = create_client(url, anon_key).auth.sign_in_with_password({"email": address, "password": chosen})
print(
    f"their own password signs in: user {again.user.id}, "
    f"must_change_password = {again.user.user_metadata['must_change_password']}"
)
PY

step "crm-sync --once again: everyone is done, so nothing happens"
crm-sync --once

step "A new Digital Resume sale in the CRM; this time crm-sync emails a setup link"
python - <<'PY'
import os, psycopg
with psycopg.connect(os.environ["CRM_DATABASE_URL"]) as conn:
    conn.execute(
        "insert into sales_closure (lead_id, lead_name, email, digital_sale_resume,"
        " digital_resume_sale_value, sale_value, plan_name, sales_rep, closed_at)"
        " values ('AWL-1046', 'Zoya Qureshi', 'zoya.qureshi@example.com', 49, 49, 399,"
        " 'Standard', 'Anita', now())"
    )
print("sales_closure: AWL-1046 Zoya Qureshi <zoya.qureshi@example.com>, digital resume 49.00")
PY
# The email links to the app's set-password page (APP_SETUP_URL, else APP_LOGIN_URL) with the
# recovery token as query parameters; the page redeems it with one verifyOtp call.
echo "CREDENTIALS_MODE=setup_link APP_SETUP_URL=http://localhost:3000/set-password crm-sync --once"
CREDENTIALS_MODE=setup_link APP_SETUP_URL=http://localhost:3000/set-password crm-sync --once

step "A mail scanner opens the link first; she presses the page's button, sets her password"
python - "$work/mail" <<'PY'
import email, email.policy, os, pathlib, re, sys
from urllib.parse import parse_qs, urlsplit
from supabase import create_client

address = "zoya.qureshi@example.com"
messages = sorted(pathlib.Path(sys.argv[1]).glob("*.eml"))
parsed = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in messages]
[message] = [m for m in parsed if m["To"].addresses[0].addr_spec == address]
text = message.get_body(preferencelist=("plain",)).get_content()
link = re.search(r"Set your password here:\s*(\S+)", text).group(1)
print(f"Subject: {message['Subject']}")
print("Set your password here: " + re.sub(r"token_hash=[^&]+", "token_hash=<hidden>", link))
page = urlsplit(link)
assert "/auth/v1/" not in link, link
print(f"the link opens the app's page {page.scheme}://{page.netloc}{page.path}: a scanner's GET of it")
print("  reaches no Auth endpoint, so it consumes nothing")

# The app's set-password page, on its button press (supabase-js):
#   await supabase.auth.verifyOtp({ token_hash, type: "recovery" })
#   await supabase.auth.updateUser({ password, data: { must_change_password: false } })
params = {key: values[0] for key, values in parse_qs(page.query).items()}
url, anon_key = os.environ["SUPABASE_URL"], os.environ["SUPABASE_ANON_KEY"]
app = create_client(url, anon_key)
verified = app.auth.verify_otp({"token_hash": params["token_hash"], "type": params["type"]})
print(f"the page's button: verifyOtp({{token_hash, type: {params['type']!r}}}) -> a session for {verified.user.email}")
app.auth.update_user({"password": "zoya's own passphrase", "data": {"must_change_password": False}})
print("its set-password form: updateUser({password, data: {must_change_password: false}})")
app.auth.sign_out()
session = create_client(url, anon_key).auth.sign_in_with_password(
    {"email": address, "password": "zoya's own passphrase"}
)
print(f"her password signs in: user {session.user.id} ({session.user.email})")

try:
    create_client(url, anon_key).auth.verify_otp({"token_hash": params["token_hash"], "type": "recovery"})
except Exception as exc:  # the token was redeemed
    print(f"the link works once: again -> {getattr(exc, 'code', None) or exc}")
else:
    raise SystemExit("a redeemed setup link worked twice")
PY

step "Change capture: the daemon runs, a sale arrives, its email follows within seconds"
crm-sync crm-setup
SYNC_INTERVAL_SECONDS=3600 crm-sync >"$work/daemon.log" 2>&1 &
daemon_pid=$!
python - "$work/mail" <<'PY'
import os, pathlib, sys, time, psycopg
mail = pathlib.Path(sys.argv[1])
before = len(list(mail.glob("*.eml")))
deadline = time.monotonic() + 60
# The daemon's first full cycle finds nothing to do; its listener is up once the change
# table is watched (the first drain after connecting empties it).
with psycopg.connect(os.environ["CRM_DATABASE_URL"], autocommit=True) as conn:
    while conn.execute(
        "select count(*) from pg_stat_activity where application_name = 'crm-sync listener'"
    ).fetchone()[0] == 0:
        if time.monotonic() > deadline:
            raise SystemExit("the daemon is not listening")
        time.sleep(0.1)
    conn.execute(
        "insert into sales_closure (lead_id, lead_name, email, digital_sale_resume,"
        " digital_resume_sale_value, sale_value, plan_name, sales_rep, closed_at)"
        " values ('AWL-1047', 'Omar Haddad', 'omar.haddad@example.com', 49, 49, 399,"
        " 'Standard', 'Anita', now())"
    )
committed = time.monotonic()
print("sales_closure: AWL-1047 Omar Haddad <omar.haddad@example.com> committed")
while len(list(mail.glob("*.eml"))) == before:
    if time.monotonic() > deadline:
        raise SystemExit("no email arrived")
    time.sleep(0.05)
print(f"his welcome email reached the SMTP sink {time.monotonic() - committed:.2f} s later"
      " (the next full cycle is an hour away)")
PY
kill -TERM "$daemon_pid"
wait "$daemon_pid" || { cat "$work/daemon.log" >&2; exit 1; }

step "What the database says (the seed's monitoring queries)"
python - <<'PY'
import os, psycopg
with psycopg.connect(os.environ["SUPABASE_DB_URL"]) as conn:
    for view in ("crm_user_count", "crm_data_distribution", "crm_credit_distribution"):
        cur = conn.execute(f"select * from public.{view}")
        print(view, [d.name for d in cur.description], cur.fetchall())
PY
