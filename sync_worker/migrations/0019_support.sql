-- What support and review need stored: every welcome email sent (with its run id and
-- Message-ID, a duplicate too), the deactivations a tripped guard held back (so that an
-- operator approves exactly the set they reviewed), and the CRM rows that cannot be used (so
-- they are reported when they appear or change, not on every cycle).

create table public.crm_sync_welcome_emails (
  id bigint generated always as identity primary key,
  email text not null check (email = lower(btrim(email)) and email <> ''),
  kind text not null,
  sent_at timestamptz not null default now(),
  run_id text,
  message_id text
);
-- A retried record call of one run is one row; the same message sent again by another run
-- (a duplicate) is a row of its own.
create unique index crm_sync_welcome_emails_once
  on public.crm_sync_welcome_emails (email, run_id, message_id);
create index crm_sync_welcome_emails_email_idx on public.crm_sync_welcome_emails (email, sent_at);

create table public.crm_sync_held_deactivations (
  run_id text not null,
  shard text not null default '0/1',  -- the shard whose run held it back ('index/count')
  email text not null check (email = lower(btrim(email)) and email <> ''),
  held_at timestamptz not null default now(),
  primary key (run_id, email)
);
create index crm_sync_held_deactivations_held_at_idx
  on public.crm_sync_held_deactivations (held_at desc);

create table public.crm_sync_invalid_rows (
  reported_by text not null,  -- the shard that reads the row ('0/1' unsharded)
  row_key text not null,      -- a digest of what is reported: the raw email, lead id, reason
  raw_email text,
  lead_id text,
  reason text not null,
  first_seen_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  primary key (reported_by, row_key)
);

do $tables$
declare
  v_table text;
begin
  foreach v_table in array array[
    'crm_sync_welcome_emails', 'crm_sync_held_deactivations', 'crm_sync_invalid_rows'
  ] loop
    execute format('alter table public.%I enable row level security', v_table);
    execute format('revoke all on public.%I from public, anon, authenticated', v_table);
    execute format('grant all on public.%I to service_role', v_table);
  end loop;
end
$tables$;

-- One held-back set, all of it at one time (so a listing never shows part of a set), and only
-- each shard's newest 20 sets kept (a guard tripped on every cycle stores its set each time).
create function public.crm_sync_hold_deactivations(
  p_run_id text, p_emails text[], p_shard text default '0/1'
)
returns void
language sql
volatile
security definer
set search_path = ''
as $$
  insert into public.crm_sync_held_deactivations (run_id, shard, email, held_at)
  select p_run_id, p_shard, lower(btrim(e)), now() from unnest(p_emails) as e
  on conflict (run_id, email) do nothing;
  delete from public.crm_sync_held_deactivations h
   where h.shard = p_shard
     and h.run_id not in (
       select r.run_id from public.crm_sync_held_deactivations r
        where r.shard = p_shard
        group by r.run_id order by max(r.held_at) desc limit 20
     );
$$;

revoke all on function public.crm_sync_hold_deactivations(text, text[], text)
  from public, anon, authenticated;
grant execute on function public.crm_sync_hold_deactivations(text, text[], text)
  to service_role;

-- As 0012, and every accepted email is also kept in the history. Items may carry run_id and
-- message_id (workers of earlier versions send neither).
create or replace function public.record_welcome_emails(p_sent jsonb)
returns setof text
language sql
volatile
security definer
set search_path = ''
as $$
  with items as (
    select lower(btrim(s.email)) as email, s.kind, s.run_id, s.message_id
      from jsonb_to_recordset(coalesce(p_sent, '[]'::jsonb))
           as s(email text, kind text, run_id text, message_id text)
     where coalesce(btrim(s.email), '') <> ''
  ),
  logged as (
    insert into public.crm_sync_welcome_emails (email, kind, run_id, message_id)
    select i.email, i.kind, i.run_id, i.message_id from items i
    on conflict (email, run_id, message_id) do nothing
    returning 1
  )
  update public.digital_resume_by_crm t
     set welcome_email_status = 'sent',
         welcome_email_kind = i.kind,
         welcome_email_sent_at = now(),
         updated_at = now()
    from items i
   where t.email = i.email
     and t.welcome_email_status <> 'sent'
  returning t.email
$$;

revoke all on function public.record_welcome_emails(jsonb) from public, anon, authenticated;
grant execute on function public.record_welcome_emails(jsonb) to service_role;
