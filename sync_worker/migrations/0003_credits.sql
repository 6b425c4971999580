-- The credit system as one consistent set of rules (DESIGN.md, "The credit rules"):
-- profiles.credits_remaining is the one balance; it changes only through the ledger, whose
-- unique entry_key makes every grant and every consumption happen exactly once; the CRM
-- tracking row mirrors the balance and is never written on its own.

create table public.credit_ledger (
  id bigint generated always as identity primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  delta integer not null check (delta <> 0),
  reason text not null check (
    reason in ('opening_balance', 'crm_enrolment', 'payment', 'recording', 'crm_recording')
  ),
  -- What the entry is for, e.g. 'payment:<payment id>': the same thing is never counted twice.
  entry_key text not null unique,
  created_at timestamptz not null default now()
);
create index credit_ledger_user_id_idx on public.credit_ledger (user_id);

-- Balances that existed before the ledger become its first entries, so "balance = sum of
-- ledger" holds for every user from the start.
insert into public.credit_ledger (user_id, delta, reason, entry_key)
select p.id, p.credits_remaining, 'opening_balance', 'opening_balance:' || p.id::text
from public.profiles p
join auth.users u on u.id = p.id
where p.credits_remaining <> 0
on conflict (entry_key) do nothing;

-- Applies one ledger entry and moves the balance, atomically and at most once per entry_key.
-- Returns false when the entry was already applied. A debit that would make the balance
-- negative raises 'insufficient credits': the single guarded UPDATE takes the row lock, so
-- of two concurrent debits of the last credit exactly one succeeds.
create function public.apply_credit_entry(
  p_user_id uuid,
  p_delta integer,
  p_reason text,
  p_entry_key text
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_delta = 0 then
    return false;
  end if;
  -- A user created before the profile trigger existed still gets a profile.
  insert into public.profiles (id, email)
  select u.id, lower(btrim(u.email)) from auth.users u where u.id = p_user_id
  on conflict do nothing;

  insert into public.credit_ledger (user_id, delta, reason, entry_key)
  values (p_user_id, p_delta, p_reason, p_entry_key)
  on conflict (entry_key) do nothing;
  if not found then
    return false;
  end if;

  update public.profiles
     set credits_remaining = credits_remaining + p_delta,
         updated_at = now()
   where id = p_user_id
     and credits_remaining + p_delta >= 0;
  if not found then
    if exists (select 1 from public.profiles where id = p_user_id) then
      raise exception 'insufficient credits'
        using errcode = 'P0001',
              detail = 'the account has no credit left for this',
              hint = 'buy a credit pack to continue';
    end if;
    raise exception 'no profile for user %', p_user_id using errcode = '23503';
  end if;
  return true;
end
$$;

-- Every completed payment grants 3 credits, once: whether the row is inserted already
-- completed or updated to completed later, and however often the status flips.
create function public.grant_credits_on_payment()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.status = 'completed'
     and (tg_op = 'INSERT' or old.status is distinct from 'completed') then
    perform public.apply_credit_entry(new.user_id, 3, 'payment', 'payment:' || new.id::text);
  end if;
  return null;
end
$$;

-- Defect 13: an older trigger of the app granting credits too would double every grant. Its
-- name is not known here, so every other trigger on payments is named for the operator.
do $other_triggers$
declare
  v_name text;
begin
  for v_name in
    select t.tgname from pg_trigger t
     where t.tgrelid = 'public.payment_details'::regclass and not t.tgisinternal
       and t.tgname <> 'grant_credits_on_payment'
  loop
    raise warning 'payment_details has another trigger, %: make sure it grants no credits '
                  '(crm-sync grants 3 per completed payment itself)', v_name;
  end loop;
end
$other_triggers$;

drop trigger if exists grant_credits_on_payment on public.payment_details;
create trigger grant_credits_on_payment
  after insert or update of status on public.payment_details
  for each row execute function public.grant_credits_on_payment();

-- A recording costs one credit, taken as the row is inserted; with no credit left the insert
-- fails with 'insufficient credits'. An AFTER INSERT trigger: it fires only for rows really
-- inserted (an upsert that updates an existing recording fires UPDATE triggers instead, and
-- costs nothing), and after row-level security's WITH CHECK has passed. The explicit
-- ownership check stays as a second line of defence.
create function public.consume_credit_on_recording()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_claims jsonb := auth.jwt();
begin
  if v_claims ->> 'role' = 'authenticated'
     and new.user_id is distinct from (v_claims ->> 'sub')::uuid then
    raise exception 'new row violates row-level security policy for table "%"', tg_table_name
      using errcode = '42501';
  end if;
  -- Every insert spends a credit, even of a recording id used before (deleted and inserted
  -- again): the entry key is unique per insert, not per recording id.
  if not public.apply_credit_entry(
    new.user_id,
    -1,
    case tg_table_name when 'crm_recordings' then 'crm_recording' else 'recording' end,
    tg_table_name || ':' || new.id::text || ':' || gen_random_uuid()::text
  ) then
    raise exception 'insufficient credits' using errcode = 'P0001';
  end if;
  return new;
end
$$;

drop trigger if exists consume_credit_on_recording on public.recordings;
create trigger consume_credit_on_recording
  after insert on public.recordings
  for each row execute function public.consume_credit_on_recording();
create trigger consume_credit_on_recording
  after insert on public.crm_recordings
  for each row execute function public.consume_credit_on_recording();

-- The tracking row mirrors the balance: whenever the balance moves...
create function public.sync_crm_credits()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.digital_resume_by_crm
     set credits_remaining = new.credits_remaining,
         updated_at = now()
   where user_id = new.id
     and credits_remaining is distinct from new.credits_remaining;
  return null;
end
$$;

create trigger sync_crm_credits
  after update of credits_remaining on public.profiles
  for each row
  when (old.credits_remaining is distinct from new.credits_remaining)
  execute function public.sync_crm_credits();

-- ...and whatever anyone writes into the mirror, it takes the balance's value.
create function public.crm_credits_follow_profile()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  new.credits_remaining := coalesce(
    (select p.credits_remaining from public.profiles p where p.id = new.user_id), 0
  );
  return new;
end
$$;

create trigger crm_credits_follow_profile
  before insert or update on public.digital_resume_by_crm
  for each row execute function public.crm_credits_follow_profile();

-- Price of the user's next 3-credit pack: a regular user's first purchase costs 12.99; every
-- later pack, and every pack of a CRM customer (their Digital Resume sale was the first
-- payment), costs 9.99.
create function public.next_credit_pack_price(p_user_id uuid default null)
returns numeric
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_claims jsonb := auth.jwt();
  v_user uuid := coalesce(p_user_id, (v_claims ->> 'sub')::uuid);
begin
  if v_user is null then
    raise exception 'a user id is required' using errcode = '22023';
  end if;
  if v_claims ->> 'role' = 'authenticated' and v_user <> (v_claims ->> 'sub')::uuid then
    raise exception 'you may only ask for your own price' using errcode = '42501';
  end if;
  if exists (select 1 from public.digital_resume_by_crm t where t.user_id = v_user)
     or exists (
       select 1 from public.payment_details d where d.user_id = v_user and d.status = 'completed'
     ) then
    return 9.99;
  end if;
  return 12.99;
end
$$;

-- Security ------------------------------------------------------------------------------------
-- Locked down in the same transaction that creates the objects, so no moment exists in which
-- they are open: on Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default (and functions to PUBLIC).
-- A user reads their own ledger; nobody but these functions writes it or any balance.

alter table public.credit_ledger enable row level security;
revoke all on public.credit_ledger from public, anon, authenticated;
grant all on public.credit_ledger to service_role;
grant select on public.credit_ledger to authenticated;
create policy crm_sync_own_rows on public.credit_ledger
  for select to authenticated using (user_id = (select auth.uid()));

revoke all on sequence public.credit_ledger_id_seq from public, anon, authenticated;
grant usage, select on sequence public.credit_ledger_id_seq to service_role;

revoke all on function
  public.apply_credit_entry(uuid, integer, text, text),
  public.grant_credits_on_payment(),
  public.consume_credit_on_recording(),
  public.sync_crm_credits(),
  public.crm_credits_follow_profile()
from public, anon, authenticated, service_role;

revoke all on function public.next_credit_pack_price(uuid) from public, anon, authenticated;
grant execute on function public.next_credit_pack_price(uuid) to authenticated, service_role;
