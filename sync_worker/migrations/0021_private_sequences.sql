-- 0019 made crm_sync_welcome_emails private to the service role, but not the sequence of its id:
-- the project's default privileges had granted anon and authenticated USAGE, SELECT and UPDATE
-- on it, so any visitor could read how many welcome emails were ever sent, or move the
-- sequence on. Sequences of crm-sync's own tables belong to the service role alone.
revoke all on sequence public.crm_sync_welcome_emails_id_seq from public, anon, authenticated;
