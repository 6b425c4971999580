-- The mass-deactivation guard over the whole CRM, whatever the shard layout. Decided per
-- shard, a CRM that lost 40% of its customers was deactivated 10 per shard, each "not more
-- than 10". Each shard's cycle now records its figures (active and eligible customers, and
-- the time its CRM snapshot was taken) and the deactivations it plans, each with the snapshot
-- that first planned it. A planned deactivation goes ahead only once every other shard of the
-- layout has recorded a snapshot taken after that one (so the sum over the shards includes
-- whatever change made it: shards run side by side, and a sibling's latest figures may be
-- from before it), and only while the guard, over every shard's pending deactivations, holds.
-- The snapshot times come from the workers' clocks (keep them in sync, as NTP does).
create table public.crm_sync_shard_figures (
  shard_count integer not null check (shard_count > 1),
  shard_index integer not null check (shard_index >= 0 and shard_index < shard_count),
  run_id text not null,
  recorded_at timestamptz not null,
  snapshot_at timestamptz not null,  -- when the cycle that recorded them began (its CRM read)
  active integer not null check (active >= 0),
  eligible integer not null check (eligible >= 0),
  primary key (shard_count, shard_index)
);

create table public.crm_sync_pending_deactivations (
  shard_count integer not null,
  shard_index integer not null,
  email text not null,
  first_planned_at timestamptz not null,  -- the snapshot of the cycle that first planned it
  primary key (shard_count, shard_index, email),
  foreign key (shard_count, shard_index)
    references public.crm_sync_shard_figures (shard_count, shard_index) on delete cascade
);

alter table public.crm_sync_shard_figures enable row level security;
alter table public.crm_sync_pending_deactivations enable row level security;
revoke all on public.crm_sync_shard_figures, public.crm_sync_pending_deactivations
  from public, anon, authenticated;
grant all on public.crm_sync_shard_figures, public.crm_sync_pending_deactivations
  to service_role;

-- Records this shard's figures and planned deactivations (unless p_record is false: a dry
-- run; writes only what changed) and answers the layout's: how many shards reported, the sums
-- of their active and eligible customers, every shard's pending deactivations, and which of
-- this shard's are ready (first planned before every other shard's latest snapshot).
create function public.crm_sync_shard_figures(
  p_shard_index integer,
  p_shard_count integer,
  p_run_id text,
  p_active integer,
  p_eligible integer,
  p_deactivating text[],
  p_snapshot_at timestamptz,
  p_record boolean default true
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_answer jsonb;
begin
  if p_record then
    insert into public.crm_sync_shard_figures as f
      (shard_count, shard_index, run_id, recorded_at, snapshot_at, active, eligible)
    values (p_shard_count, p_shard_index, p_run_id, clock_timestamp(), p_snapshot_at,
            p_active, p_eligible)
    on conflict (shard_count, shard_index) do update
      set run_id = excluded.run_id, recorded_at = excluded.recorded_at,
          snapshot_at = excluded.snapshot_at, active = excluded.active,
          eligible = excluded.eligible;
    delete from public.crm_sync_pending_deactivations d
     where d.shard_count = p_shard_count and d.shard_index = p_shard_index
       and d.email <> all(coalesce(p_deactivating, '{}'));
    insert into public.crm_sync_pending_deactivations
      (shard_count, shard_index, email, first_planned_at)
    select p_shard_count, p_shard_index, e, p_snapshot_at
      from unnest(coalesce(p_deactivating, '{}')) as e
    on conflict do nothing;
  end if;
  select jsonb_build_object(
           'shards', (select count(*) from public.crm_sync_shard_figures f
                       where f.shard_count = p_shard_count),
           'active', (select coalesce(sum(f.active), 0) from public.crm_sync_shard_figures f
                       where f.shard_count = p_shard_count),
           'eligible', (select coalesce(sum(f.eligible), 0)
                          from public.crm_sync_shard_figures f
                         where f.shard_count = p_shard_count),
           'pending', (select count(*) from public.crm_sync_pending_deactivations d
                        where d.shard_count = p_shard_count),
           'ready', coalesce((
             select jsonb_agg(d.email order by d.email)
               from public.crm_sync_pending_deactivations d
              where d.shard_count = p_shard_count and d.shard_index = p_shard_index
                and d.email = any(coalesce(p_deactivating, '{}'))
                and d.first_planned_at < (
                  select min(f.snapshot_at) from public.crm_sync_shard_figures f
                   where f.shard_count = p_shard_count and f.shard_index <> p_shard_index)
           ), '[]'::jsonb)
         )
    into v_answer;
  return v_answer;
end
$$;

revoke all on function public.crm_sync_shard_figures(
    integer, integer, text, integer, integer, text[], timestamptz, boolean
  )
  from public, anon, authenticated;
grant execute on function public.crm_sync_shard_figures(
    integer, integer, text, integer, integer, text[], timestamptz, boolean
  )
  to service_role;
