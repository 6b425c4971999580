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
-- "Database error saving new user", so the statement is kept to one that cannot conflict.
create or replace function public.crm_sync_create_profile()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.profiles (id, email, full_name)
  values (
    new.id,
    lower(btrim(new.email)),
    coalesce(new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'name')
  )
  on conflict do nothing;
  return new;
end
$$;

-- Triggers fire in name order: `zz_` makes ours fire after an app's own profile trigger (often
-- `on_auth_user_created`, which may lack `on conflict`), so ours is the one that yields.
drop trigger if exists zz_crm_sync_create_profile on auth.users;
create trigger zz_crm_sync_create_profile
  after insert on auth.users
  for each row execute function public.crm_sync_create_profile();
