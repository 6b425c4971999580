-- Several workers may share the customers (SYNC_SHARD_INDEX of SYNC_SHARD_COUNT): a stable
-- hash of the normalised email picks each customer's shard, in SQL as in the worker
-- (the first 32 bits of its MD5, modulo the count).
create function public.crm_sync_shard(p_email text, p_shard_count integer)
returns integer
language sql
immutable
set search_path = ''
as $$
  select mod(('x' || substr(md5(p_email), 1, 8))::bit(32)::bigint, greatest(p_shard_count, 1))::integer
$$;

-- One lease per shard. Shards of one count run side by side; an unsharded run (count 1)
-- excludes every shard and every shard excludes it, and shards of two different counts
-- exclude each other: no two runs ever act on one customer.
create function public.acquire_sync_lease(
  p_holder text, p_ttl_seconds integer, p_shard_index integer, p_shard_count integer
)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_name text;
begin
  if p_holder is null or p_holder = '' or p_ttl_seconds is null or p_ttl_seconds < 1 then
    raise exception 'a holder and a positive time-to-live are required' using errcode = '22023';
  end if;
  if p_shard_count is null or p_shard_count < 1 or p_shard_index is null
     or p_shard_index < 0 or p_shard_index >= p_shard_count then
    raise exception 'the shard index must be from 0 to its count - 1' using errcode = '22023';
  end if;
  v_name := case when p_shard_count = 1 then 'sync'
                 else format('shard %s of %s', p_shard_index, p_shard_count) end;
  -- Acquirers one at a time: the conflict check and the take are one decision.
  lock table public.crm_sync_lease in share row exclusive mode;
  if exists (
    select 1 from public.crm_sync_lease l
     where l.expires_at >= v_now
       and l.holder <> p_holder
       and l.name <> v_name
       and (p_shard_count = 1
            or l.name = 'sync'
            or l.name not like format('shard %% of %s', p_shard_count))
  ) then
    return false;
  end if;
  insert into public.crm_sync_lease as l (name, holder, acquired_at, renewed_at, expires_at)
  values (v_name, p_holder, v_now, v_now, v_now + make_interval(secs => p_ttl_seconds))
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

-- Renewal and release find the holder's lease, whichever shard it is for.
create or replace function public.renew_sync_lease(p_holder text, p_ttl_seconds integer)
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
   where l.holder = p_holder and l.expires_at >= v_now;
  return found;
end
$$;

create or replace function public.release_sync_lease(p_holder text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  delete from public.crm_sync_lease l where l.holder = p_holder;
  return found;
end
$$;

drop function public.crm_sync_tracking_page(text, integer);
create function public.crm_sync_tracking_page(
  p_after text, p_limit integer, p_shard_index integer default 0, p_shard_count integer default 1
)
returns table (
  email text,
  user_id uuid,
  is_active boolean,
  welcome_email_status text,
  account_origin text,
  full_name text,
  crm_lead_id text,
  credits_remaining integer
)
language sql
stable
set search_path = ''
as $$
  select t.email, t.user_id, t.is_active, t.welcome_email_status, t.account_origin,
         t.full_name, t.crm_lead_id, t.credits_remaining
    from public.digital_resume_by_crm t
   where t.email collate "C" > coalesce(p_after, '') collate "C"
     and (p_shard_count <= 1 or public.crm_sync_shard(t.email, p_shard_count) = p_shard_index)
   order by t.email collate "C"
   limit least(greatest(p_limit, 1), 50000)
$$;

revoke all on function
  public.crm_sync_shard(text, integer),
  public.acquire_sync_lease(text, integer, integer, integer),
  public.crm_sync_tracking_page(text, integer, integer, integer)
from public, anon, authenticated;
grant execute on function
  public.crm_sync_shard(text, integer),
  public.acquire_sync_lease(text, integer, integer, integer),
  public.crm_sync_tracking_page(text, integer, integer, integer)
to service_role;
