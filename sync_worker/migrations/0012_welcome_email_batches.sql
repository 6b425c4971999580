-- Records a batch of welcome emails the mail server accepted, in one call: the worker sends
-- the next emails while a record is in flight, and records all that were accepted meanwhile
-- with the next call (one request per email made the record, not the mail server, set the
-- pace of a first run). p_sent is a JSON array of {"email": ..., "kind": ...}. Returns the
-- emails recorded now; one already recorded is left as it was and not returned, so a
-- duplicate stays visible to the caller. record_welcome_email(text, text) stays for workers
-- of earlier versions.
create function public.record_welcome_emails(p_sent jsonb)
returns setof text
language sql
volatile
security definer
set search_path = ''
as $$
  update public.digital_resume_by_crm t
     set welcome_email_status = 'sent',
         welcome_email_kind = s.kind,
         welcome_email_sent_at = now(),
         updated_at = now()
    from jsonb_to_recordset(coalesce(p_sent, '[]'::jsonb)) as s(email text, kind text)
   where t.email = lower(btrim(s.email))
     and t.welcome_email_status <> 'sent'
  returning t.email
$$;

revoke all on function public.record_welcome_emails(jsonb) from public, anon, authenticated;
grant execute on function public.record_welcome_emails(jsonb) to service_role;
