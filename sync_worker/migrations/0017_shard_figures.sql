-- The mass-deactivation guard over the whole CRM, whatever the shard layout. Each shard's
-- cycle records its figures (active customers, eligible customers, deactivations it plans) with
-- the time its CRM snapshot was taken; a shard deactivates only when its previous record
-- already planned at least as many and every shard of its layout has recorded a snapshot taken
-- after that previous one (so every shard's figures include the change that made this one's
-- deactivations), and the guard then decides over their sum. Decided per shard, a CRM
-- that lost 40% of its customers was deactivated 10 per shard, each "not more than 10".
create table public.crm_sync_shard_figures (
  shard_count integer not null check (shard_count > 1),
  shard_index integer not null check (shard_index >= 0 and shard_index < shard_count),
  run_id text not null,
  recorded_at timestamptz not null,
  snapshot_at timestamptz not null,  -- when the cycle that recorded them began (its CRM read)
  active integer not null check (active >= 0),
  eligible integer not null check (eligible >= 0),
  deactivating integer not null check (deactivating >= 0),
  primary key (shard_count, shard_index)
);

alter table public.crm_sync_shard_figures enable row level security;
revoke all on public.crm_sync_shard_figures from public, anon, authenticated;
grant all on public.crm_sync_shard_figures to service_role;

-- Records this shard's figures (unless p_record is false: a dry run) and answers the layout's:
-- the sums over every shard's latest record, how many shards have recorded since this shard's
-- previous record, and what that previous record planned.
create function public.crm_sync_shard_figures(
  p_shard_index integer,
  p_shard_count integer,
  p_run_id text,
  p_active integer,
  p_eligible integer,
  p_deactivating integer,
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
  v_now timestamptz := clock_timestamp();
  v_previous public.crm_sync_shard_figures;
  v_answer jsonb;
begin
  select * into v_previous from public.crm_sync_shard_figures f
   where f.shard_count = p_shard_count and f.shard_index = p_shard_index;
  if p_record then
    insert into public.crm_sync_shard_figures as f
      (shard_count, shard_index, run_id, recorded_at, snapshot_at, active, eligible,
       deactivating)
    values (p_shard_count, p_shard_index, p_run_id, v_now, p_snapshot_at, p_active, p_eligible,
            p_deactivating)
    on conflict (shard_count, shard_index) do update
      set run_id = excluded.run_id, recorded_at = excluded.recorded_at,
          snapshot_at = excluded.snapshot_at,
          active = excluded.active, eligible = excluded.eligible,
          deactivating = excluded.deactivating;
  end if;
  select jsonb_build_object(
           'active', coalesce(sum(f.active), 0),
           'eligible', coalesce(sum(f.eligible), 0),
           'deactivating', coalesce(sum(f.deactivating), 0),
           'shards', count(*),
           'shards_since_previous', count(*) filter (
             where v_previous.snapshot_at is not null
               and (f.shard_index = p_shard_index or f.snapshot_at > v_previous.snapshot_at)),
           'previously_planned', coalesce(v_previous.deactivating, 0)
         )
    into v_answer
    from public.crm_sync_shard_figures f
   where f.shard_count = p_shard_count;
  return v_answer;
end
$$;

revoke all on function
  public.crm_sync_shard_figures(
    integer, integer, text, integer, integer, integer, timestamptz, boolean
  )
  from public, anon, authenticated;
grant execute on function
  public.crm_sync_shard_figures(
    integer, integer, text, integer, integer, integer, timestamptz, boolean
  )
  to service_role;
