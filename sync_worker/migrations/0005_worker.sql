-- What crm-sync itself keeps in the Supabase database, so the worker is stateless: run
-- history, per-customer failures, the lease that keeps one cycle active at a time, the RPCs it
-- writes through, and the seed's monitoring queries as views.

create table public.crm_sync_runs (
  id uuid primary key default gen_random_uuid(),
  worker_id text not null,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  status text not null default 'running'
    check (status in ('running', 'succeeded', 'partial', 'failed', 'interrupted')),
  dry_run boolean not null default false,
  counts jsonb not null default '{}'::jsonb,
  error text
);
create index crm_sync_runs_started_at_idx on public.crm_sync_runs (started_at desc);

-- One row per customer whose last attempt at some step failed; deleted when the customer
-- succeeds. Not keyed to the tracking row: an account creation can fail before one exists.
create table public.crm_sync_failures (
  email text primary key check (email = lower(btrim(email)) and email <> ''),
  step text not null,
  reason text not null,
  attempts integer not null default 1 check (attempts >= 1),
  retriable boolean not null default true,
  first_failed_at timestamptz not null default now(),
  last_failed_at timestamptz not null default now(),
  next_attempt_at timestamptz,
  parked_at timestamptz
);

create table public.crm_sync_lease (
  name text primary key,
  holder text not null,
  acquired_at timestamptz not null,
  renewed_at timestamptz not null,
  expires_at timestamptz not null
);

-- Enrols a batch of CRM customers whose auth accounts exist. For each element of p_customers
-- ({email, user_id, full_name?, crm_lead_id?, payment_details?, account_origin?}), in its own
-- subtransaction so one bad customer never undoes the others: upsert the profile, grant the
-- initial credits once (ledger key crm_enrolment:<user_id>), upsert the tracking row, create
-- the stats row. Idempotent: a second call with the same input writes nothing and answers
-- 'unchanged'. Outcomes: enrolled, reactivated, updated, unchanged, rejected, error.
create function public.enrol_crm_customers(p_customers jsonb, p_initial_credits integer default 4)
returns table (
  email text,
  user_id uuid,
  outcome text,
  credits_granted integer,
  credits_remaining integer,
  welcome_email_status text,
  account_origin text,
  error text
)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_item jsonb;
  v_email text;
  v_user uuid;
  v_auth_email text;
  v_auth_created timestamptz;
  v_before public.digital_resume_by_crm%rowtype;
  v_after public.digital_resume_by_crm%rowtype;
  v_granted boolean;
  v_changed boolean;
  v_payment jsonb;
begin
  if jsonb_typeof(p_customers) is distinct from 'array' then
    raise exception 'p_customers must be a JSON array' using errcode = '22023';
  end if;
  if p_initial_credits is null or p_initial_credits < 0 then
    raise exception 'p_initial_credits must be zero or more' using errcode = '22023';
  end if;

  for v_item in select value from jsonb_array_elements(p_customers) loop
    v_email := lower(btrim(v_item ->> 'email'));
    v_user := null;
    begin
      v_user := (v_item ->> 'user_id')::uuid;
      if v_email is null or v_email = '' or v_user is null then
        raise exception 'email and user_id are required' using errcode = '22023';
      end if;

      select lower(btrim(u.email)), u.created_at into v_auth_email, v_auth_created
        from auth.users u where u.id = v_user;
      if not found then
        return query select v_email, v_user, 'rejected'::text, 0, null::integer, null::text,
                            null::text, 'no auth user has this user_id'::text;
        continue;
      end if;
      if v_auth_email is distinct from v_email then
        return query select v_email, v_user, 'rejected'::text, 0, null::integer, null::text,
                            null::text, 'the auth user with this user_id has another email'::text;
        continue;
      end if;

      select * into v_before from public.digital_resume_by_crm t where t.email = v_email;
      if found and v_before.user_id <> v_user then
        return query select v_email, v_user, 'rejected'::text, 0, null::integer, null::text,
                            null::text, 'this email is enrolled with another account'::text;
        continue;
      end if;
      if exists (select 1 from public.digital_resume_by_crm t
                 where t.user_id = v_user and t.email <> v_email) then
        return query select v_email, v_user, 'rejected'::text, 0, null::integer, null::text,
                            null::text, 'this account is enrolled under another email'::text;
        continue;
      end if;

      insert into public.profiles as p (id, email, full_name)
      values (v_user, v_email, nullif(btrim(v_item ->> 'full_name'), ''))
      on conflict (id) do update
        set email = coalesce(p.email, excluded.email),
            full_name = coalesce(p.full_name, excluded.full_name),
            updated_at = now()
        where p.email is null or (p.full_name is null and excluded.full_name is not null);

      v_granted := public.apply_credit_entry(
        v_user, p_initial_credits, 'crm_enrolment', 'crm_enrolment:' || v_user::text
      );

      v_payment := coalesce(v_item -> 'payment_details', v_before.payment_details, '{}'::jsonb);
      insert into public.digital_resume_by_crm as t (
        email, user_id, full_name, crm_lead_id, payment_details, user_created_at,
        account_origin, is_active
      )
      values (
        v_email, v_user,
        nullif(btrim(v_item ->> 'full_name'), ''),
        nullif(btrim(v_item ->> 'crm_lead_id'), ''),
        v_payment,
        v_auth_created,
        coalesce(v_item ->> 'account_origin', 'created'),
        true
      )
      on conflict (email) do update
        set full_name = coalesce(excluded.full_name, t.full_name),
            crm_lead_id = coalesce(excluded.crm_lead_id, t.crm_lead_id),
            payment_details = excluded.payment_details,
            is_active = true,
            deactivated_at = null,
            last_sync_at = now(),
            updated_at = now()
        where (t.full_name, t.crm_lead_id, t.payment_details, t.is_active)
          is distinct from
              (coalesce(excluded.full_name, t.full_name),
               coalesce(excluded.crm_lead_id, t.crm_lead_id),
               excluded.payment_details, true);
      v_changed := found;

      perform public.refresh_crm_dashboard_stats(v_email);

      select * into v_after from public.digital_resume_by_crm t where t.email = v_email;
      return query select
        v_email,
        v_user,
        case
          when v_before.email is null then 'enrolled'
          when not v_before.is_active then 'reactivated'
          when v_changed then 'updated'
          else 'unchanged'
        end,
        case when v_granted then p_initial_credits else 0 end,
        v_after.credits_remaining,
        v_after.welcome_email_status,
        v_after.account_origin,
        null::text;
    exception when others then
      return query select v_email, v_user, 'error'::text, 0, null::integer, null::text,
                          null::text, sqlerrm;
    end;
  end loop;
end
$$;

-- Marks customers no longer eligible in the CRM as inactive. Nothing is deleted, no credit
-- taken back. Returns the emails that changed.
create function public.deactivate_crm_customers(p_emails text[])
returns setof text
language sql
volatile
security definer
set search_path = ''
as $$
  update public.digital_resume_by_crm t
     set is_active = false, deactivated_at = now(), updated_at = now()
   where t.email = any (select lower(btrim(e)) from unnest(p_emails) as e)
     and t.is_active
  returning t.email
$$;

-- Records that the welcome email was accepted by the mail server. Returns false when it was
-- already recorded, so a duplicate is visible to the caller.
create function public.record_welcome_email(p_email text, p_kind text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  update public.digital_resume_by_crm t
     set welcome_email_status = 'sent',
         welcome_email_kind = p_kind,
         welcome_email_sent_at = now(),
         updated_at = now()
   where t.email = lower(btrim(p_email))
     and t.welcome_email_status <> 'sent';
  return found;
end
$$;

-- The lease: one active cycle across every process, replica and cron run. Taking it succeeds
-- when nobody holds it, when the caller already holds it (a renewal), or when the holder's
-- time-to-live has passed (a crashed holder). clock_timestamp(), not now(): the lease is
-- about wall time, not the start of the calling transaction.
create function public.acquire_sync_lease(p_holder text, p_ttl_seconds integer)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
begin
  if p_holder is null or p_holder = '' or p_ttl_seconds is null or p_ttl_seconds < 1 then
    raise exception 'a holder and a positive time-to-live are required' using errcode = '22023';
  end if;
  insert into public.crm_sync_lease as l (name, holder, acquired_at, renewed_at, expires_at)
  values ('sync', p_holder, v_now, v_now, v_now + make_interval(secs => p_ttl_seconds))
  on conflict (name) do update
    set holder = excluded.holder,
        acquired_at = case when l.holder = excluded.holder then l.acquired_at
                           else excluded.acquired_at end,
        renewed_at = excluded.renewed_at,
        expires_at = excluded.expires_at
    where l.holder = excluded.holder or l.expires_at < v_now;
  return found;
end
$$;

-- The heartbeat's renewal: only extends a lease the caller still holds, never re-creates one
-- (a renewal still in flight when its holder releases must not take the lease again).
create function public.renew_sync_lease(p_holder text, p_ttl_seconds integer)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
begin
  if p_holder is null or p_holder = '' or p_ttl_seconds is null or p_ttl_seconds < 1 then
    raise exception 'a holder and a positive time-to-live are required' using errcode = '22023';
  end if;
  update public.crm_sync_lease l
     set renewed_at = v_now, expires_at = v_now + make_interval(secs => p_ttl_seconds)
   where l.name = 'sync' and l.holder = p_holder and l.expires_at >= v_now;
  return found;
end
$$;

create function public.release_sync_lease(p_holder text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  delete from public.crm_sync_lease l where l.name = 'sync' and l.holder = p_holder;
  return found;
end
$$;

-- The seed's three monitoring queries.
create view public.crm_user_count with (security_invoker = true) as
  select count(*) filter (where is_active) as total_crm_users,
         count(*) filter (where not is_active) as inactive_crm_users
    from public.digital_resume_by_crm;

create view public.crm_data_distribution with (security_invoker = true) as
  select 'Job Requests'::text as data_type, count(*) as count from public.crm_job_requests
  union all
  select 'Recordings', count(*) from public.crm_recordings
  union all
  select 'Resumes', count(*) from public.crm_resumes;

create view public.crm_credit_distribution with (security_invoker = true) as
  select credits_remaining, count(*) as user_count
    from public.digital_resume_by_crm
   group by credits_remaining
   order by credits_remaining desc;

-- Security ------------------------------------------------------------------------------------
-- Locked down in the same transaction that creates the objects, so no moment exists in which
-- they are open: on Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default (and functions to PUBLIC).
-- The worker's bookkeeping and RPCs are the service role's alone; the monitoring views are for
-- operators.

do $tables$
declare
  v_table text;
begin
  foreach v_table in array array['crm_sync_runs', 'crm_sync_failures', 'crm_sync_lease'] loop
    execute format('alter table public.%I enable row level security', v_table);
    execute format('revoke all on public.%I from public, anon, authenticated', v_table);
    execute format('grant all on public.%I to service_role', v_table);
  end loop;
end
$tables$;

revoke all on public.crm_user_count, public.crm_data_distribution,
  public.crm_credit_distribution from public, anon, authenticated;
grant select on public.crm_user_count, public.crm_data_distribution,
  public.crm_credit_distribution to service_role;

revoke all on function
  public.enrol_crm_customers(jsonb, integer),
  public.deactivate_crm_customers(text[]),
  public.record_welcome_email(text, text),
  public.acquire_sync_lease(text, integer),
  public.renew_sync_lease(text, integer),
  public.release_sync_lease(text)
from public, anon, authenticated;
grant execute on function
  public.enrol_crm_customers(jsonb, integer),
  public.deactivate_crm_customers(text[]),
  public.record_welcome_email(text, text),
  public.acquire_sync_lease(text, integer),
  public.renew_sync_lease(text, integer),
  public.release_sync_lease(text)
to service_role;
