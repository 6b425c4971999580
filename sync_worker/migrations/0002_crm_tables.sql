-- The CRM side of the seed design: the tracking table (the seed's `digital_resume_by_CRM`,
-- which Postgres folds to lower case because it is unquoted; every client must use
-- `digital_resume_by_crm`), the CRM customers' own data tables, and their dashboard stats.

-- The first implementation of the seed created this table too (as `digital_resume_by_CRM`,
-- folded to lower case). Adopting its rows needs a person: say so instead of failing vaguely.
do $preflight$
begin
  if to_regclass('public.digital_resume_by_crm') is not null then
    raise exception 'public.digital_resume_by_crm already exists (from the first implementation?)'
      using hint = 'rename it (alter table public.digital_resume_by_crm rename to '
                   'digital_resume_by_crm_v1) and run crm-sync migrate again; then re-enrol '
                   'its customers with crm-sync --once';
  end if;
end
$preflight$;

create table public.digital_resume_by_crm (
  email text primary key check (email = lower(btrim(email)) and email <> ''),
  user_id uuid not null unique references auth.users (id) on delete cascade,
  full_name text,
  crm_lead_id text,
  -- Mirror of profiles.credits_remaining (the one balance), kept by triggers in 0003.
  credits_remaining integer not null default 0 check (credits_remaining >= 0),
  payment_details jsonb not null default '{}'::jsonb,
  user_created_at timestamptz,
  last_sync_at timestamptz not null default now(),
  is_active boolean not null default true,
  deactivated_at timestamptz,
  -- How the account came to be: created by crm-sync, or an existing account linked.
  account_origin text not null default 'created' check (account_origin in ('created', 'linked')),
  -- The welcome email is sent once; `sent` is written only after the mail server accepted it.
  welcome_email_status text not null default 'pending'
    check (welcome_email_status in ('pending', 'sent')),
  welcome_email_kind text check (welcome_email_kind in ('new_account', 'credits_added')),
  welcome_email_sent_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index digital_resume_by_crm_pending_email_idx on public.digital_resume_by_crm (email)
  where welcome_email_status = 'pending';

comment on table public.digital_resume_by_crm is
  'CRM tracking row per Digital Resume customer (the seed''s digital_resume_by_CRM).';

-- Each foreign key is declared exactly once (the first implementation declared them twice
-- and failed on PostgreSQL 15).
create table public.crm_job_requests (
  id uuid primary key default gen_random_uuid(),
  email text not null references public.digital_resume_by_crm (email)
    on delete cascade on update cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  job_title text,
  company text,
  job_description text,
  status text not null default 'pending',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index crm_job_requests_email_idx on public.crm_job_requests (email, created_at);
create index crm_job_requests_user_id_idx on public.crm_job_requests (user_id);

create table public.crm_recordings (
  id uuid primary key default gen_random_uuid(),
  email text not null references public.digital_resume_by_crm (email)
    on delete cascade on update cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  job_request_id uuid references public.crm_job_requests (id) on delete set null,
  video_url text,
  duration integer check (duration >= 0),
  created_at timestamptz not null default now()
);
create index crm_recordings_email_idx on public.crm_recordings (email, created_at);
create index crm_recordings_user_id_idx on public.crm_recordings (user_id);
create index crm_recordings_job_request_id_idx on public.crm_recordings (job_request_id);

create table public.crm_resumes (
  id uuid primary key default gen_random_uuid(),
  email text not null references public.digital_resume_by_crm (email)
    on delete cascade on update cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  resume_url text,
  file_type text,
  created_at timestamptz not null default now()
);
create index crm_resumes_email_idx on public.crm_resumes (email, created_at);
create index crm_resumes_user_id_idx on public.crm_resumes (user_id);

create table public.crm_dashboard_stats (
  email text primary key references public.digital_resume_by_crm (email)
    on delete cascade on update cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  total_applications integer not null default 0 check (total_applications >= 0),
  total_recordings integer not null default 0 check (total_recordings >= 0),
  total_resumes integer not null default 0 check (total_resumes >= 0),
  last_application_date timestamptz,
  last_recording_date timestamptz,
  updated_at timestamptz not null default now()
);
create index crm_dashboard_stats_user_id_idx on public.crm_dashboard_stats (user_id);

-- A CRM data row always belongs to the account enrolled under its email: the owner is filled
-- in when omitted and a mismatch is refused. SECURITY DEFINER so the check sees the real owner
-- even when row-level security would hide another customer's tracking row from the caller.
create function public.crm_row_owner()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_owner uuid;
begin
  new.email := lower(btrim(new.email));
  select t.user_id into v_owner from public.digital_resume_by_crm t where t.email = new.email;
  if v_owner is null then
    return new;  -- the foreign key reports the unknown email
  end if;
  if new.user_id is null then
    new.user_id := v_owner;
  elsif new.user_id <> v_owner then
    raise exception 'this row''s user_id does not own the CRM email it names'
      using errcode = '42501';
  end if;
  return new;
end
$$;

-- Named so they fire before the credit trigger of crm_recordings (triggers fire by name).
create trigger a10_crm_row_owner before insert or update of email, user_id
  on public.crm_job_requests for each row execute function public.crm_row_owner();
create trigger a10_crm_row_owner before insert or update of email, user_id
  on public.crm_recordings for each row execute function public.crm_row_owner();
create trigger a10_crm_row_owner before insert or update of email, user_id
  on public.crm_resumes for each row execute function public.crm_row_owner();

-- Security ------------------------------------------------------------------------------------
-- Locked down in the same transaction that creates the objects, so no moment exists in which
-- they are open: on Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default (and functions to PUBLIC).
-- A signed-in CRM customer reads their own tracking and stats rows and nothing else of them;
-- they create, edit and delete their own job requests, recordings and resumes only, whose
-- user_id must be theirs and whose email must be their own CRM email.

do $tables$
declare
  v_table text;
begin
  foreach v_table in array array[
    'digital_resume_by_crm', 'crm_job_requests', 'crm_recordings', 'crm_resumes',
    'crm_dashboard_stats'
  ] loop
    execute format('alter table public.%I enable row level security', v_table);
    execute format('revoke all on public.%I from public, anon, authenticated', v_table);
    execute format('grant all on public.%I to service_role', v_table);
  end loop;
  foreach v_table in array array['crm_job_requests', 'crm_recordings', 'crm_resumes'] loop
    execute format($p$
      create policy crm_sync_own_rows on public.%I
        for all to authenticated
        using (user_id = (select auth.uid()))
        with check (
          user_id = (select auth.uid())
          and email = (
            select t.email from public.digital_resume_by_crm t
            where t.user_id = (select auth.uid())
          )
        )
    $p$, v_table);
  end loop;
end
$tables$;

grant select on public.digital_resume_by_crm, public.crm_dashboard_stats to authenticated;
grant select, insert, update, delete
  on public.crm_job_requests, public.crm_recordings, public.crm_resumes to authenticated;

create policy crm_sync_own_rows on public.digital_resume_by_crm
  for select to authenticated using (user_id = (select auth.uid()));
create policy crm_sync_own_rows on public.crm_dashboard_stats
  for select to authenticated using (user_id = (select auth.uid()));

revoke all on function public.crm_row_owner() from public, anon, authenticated, service_role;
