-- The CareerCast app's own tables, created only where they are missing (the live app already
-- has some of them), plus the columns and checks crm-sync relies on, and a profile for every
-- new auth user.

create table if not exists public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  full_name text,
  credits_remaining integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table public.profiles add column if not exists email text;
alter table public.profiles add column if not exists full_name text;
alter table public.profiles add column if not exists credits_remaining integer not null default 0;
alter table public.profiles add column if not exists created_at timestamptz not null default now();
alter table public.profiles add column if not exists updated_at timestamptz not null default now();

-- Emails are stored trimmed and lower-case everywhere (Supabase Auth lower-cases them too);
-- an older row that is not is normalised once, here, so the check can hold for all rows.
update public.profiles set email = lower(btrim(email)) where email <> lower(btrim(email));

do $checks$
begin
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'public.profiles'::regclass and conname = 'profiles_credits_remaining_check'
  ) then
    alter table public.profiles
      add constraint profiles_credits_remaining_check check (credits_remaining >= 0) not valid;
    begin
      alter table public.profiles validate constraint profiles_credits_remaining_check;
    exception when check_violation then
      -- An existing negative balance stays visible to `crm-sync verify`; the check still
      -- guards every new write.
      raise warning 'profiles has negative balances; the check guards new writes only';
    end;
  end if;
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'public.profiles'::regclass and conname = 'profiles_email_normalized'
  ) then
    alter table public.profiles
      add constraint profiles_email_normalized check (email = lower(btrim(email)));
  end if;
end
$checks$;

create table if not exists public.payment_details (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  amount numeric(10, 2) not null check (amount >= 0),
  currency text not null default 'USD',
  status text not null default 'created'
    check (status in ('created', 'completed', 'failed', 'refunded')),
  provider_order_id text unique,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists payment_details_user_id_idx on public.payment_details (user_id);

create table if not exists public.job_requests (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  job_title text,
  company text,
  job_description text,
  status text not null default 'pending',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
-- `crm-sync verify` compares creation times with enrolment times (data isolation).
alter table public.job_requests add column if not exists created_at timestamptz not null default now();
create index if not exists job_requests_user_id_idx on public.job_requests (user_id);

create table if not exists public.recordings (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  job_request_id uuid references public.job_requests (id) on delete set null,
  video_url text,
  duration integer check (duration >= 0),
  created_at timestamptz not null default now()
);
alter table public.recordings add column if not exists created_at timestamptz not null default now();
create index if not exists recordings_user_id_idx on public.recordings (user_id);

-- A profile (0 credits) for every new auth user. `on conflict do nothing` lets it coexist with
-- an app's own profile trigger; anything raised here would make Supabase Auth answer 500
-- "Database error saving new user", so whatever fails is only a warning.
create or replace function public.crm_sync_create_profile()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  begin
    insert into public.profiles (id, email, full_name)
    values (
      new.id,
      lower(btrim(new.email)),
      coalesce(new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'name')
    )
    on conflict do nothing;
  exception when others then
    -- Never fail a signup for our sake (an app's profiles may have columns we cannot fill);
    -- a missing profile is created later by the enrolment RPC or the first credit entry.
    raise warning 'crm-sync could not create the profile of user %: %', new.id, sqlerrm;
  end;
  return new;
end
$$;

-- Triggers fire in name order: `zz_` makes ours fire after an app's own profile trigger (often
-- `on_auth_user_created`, which may lack `on conflict`), so ours is the one that yields.
drop trigger if exists zz_crm_sync_create_profile on auth.users;
create trigger zz_crm_sync_create_profile
  after insert on auth.users
  for each row execute function public.crm_sync_create_profile();

-- Security ------------------------------------------------------------------------------------
-- Locked down in the same transaction that creates the objects, so no moment exists in which
-- they are open: on Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default (and functions to PUBLIC).
-- A signed-in user reads only their own rows of these app tables, edits only the descriptive
-- columns of their profile (never id, email, the balance or timestamps: column privileges
-- hold even if the app has a broader UPDATE policy), and writes only their own job requests
-- and recordings. Payments are written by the payment provider's webhook (service role).
-- The app may already carry permissive policies (e.g. "profiles are viewable by everyone");
-- permissive policies are OR-ed, so each own-rows rule is also RESTRICTIVE (AND-ed).

do $tables$
declare
  v_table text;
  v_owner text;
begin
  foreach v_table in array array['profiles', 'payment_details', 'job_requests', 'recordings'] loop
    v_owner := case v_table when 'profiles' then 'id' else 'user_id' end;
    execute format('alter table public.%I enable row level security', v_table);
    execute format('revoke all on public.%I from public, anon, authenticated', v_table);
    execute format('grant all on public.%I to service_role', v_table);
    execute format('drop policy if exists crm_sync_own_rows on public.%I', v_table);
    execute format(
      'create policy crm_sync_own_rows on public.%I for all to authenticated'
      ' using (%I = (select auth.uid())) with check (%I = (select auth.uid()))',
      v_table, v_owner, v_owner);
    execute format('drop policy if exists crm_sync_only_own_rows on public.%I', v_table);
    execute format(
      'create policy crm_sync_only_own_rows on public.%I as restrictive for all to authenticated'
      ' using (%I = (select auth.uid())) with check (%I = (select auth.uid()))',
      v_table, v_owner, v_owner);
  end loop;
end
$tables$;

grant select on public.profiles, public.payment_details to authenticated;
grant select, insert, update, delete on public.job_requests, public.recordings to authenticated;

do $profile_columns$
declare
  v_columns text;
begin
  select string_agg(quote_ident(c.column_name), ', ' order by c.ordinal_position)
    into v_columns
    from information_schema.columns c
   where c.table_schema = 'public' and c.table_name = 'profiles'
     and c.column_name not in ('id', 'email', 'credits_remaining', 'created_at', 'updated_at');
  if v_columns is not null then
    execute format('grant update (%s) on public.profiles to authenticated', v_columns);
  end if;
end
$profile_columns$;

revoke all on function public.crm_sync_create_profile()
  from public, anon, authenticated, service_role;
