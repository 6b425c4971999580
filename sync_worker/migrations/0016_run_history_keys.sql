-- The run history with several workers at once (shards): every log line carries the run id,
-- so the run id is the history's key (its own unique column, written when the run starts,
-- also for a run that then crashes), beside the shard it ran; and a run left 'running' is
-- closed as abandoned only when its worker no longer holds a lease. Closing every 'running'
-- row (0008) marked each shard's live siblings as dead.
alter table public.crm_sync_runs add column if not exists run_id text unique;
alter table public.crm_sync_runs add column if not exists shard text;

-- Earlier workers kept the run id in `counts` only (and only when a report existed).
update public.crm_sync_runs r
   set run_id = r.counts ->> 'run_id'
 where r.run_id is null
   and r.counts ? 'run_id'
   and not exists (select 1 from public.crm_sync_runs o where o.run_id = r.counts ->> 'run_id');

create function public.crm_sync_close_abandoned_runs(p_error text)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_closed integer;
begin
  update public.crm_sync_runs r
     set status = 'abandoned',
         finished_at = clock_timestamp(),
         error = p_error
   where r.status = 'running'
     and not exists (
       select 1 from public.crm_sync_lease l
        where l.holder = r.worker_id and l.expires_at >= clock_timestamp()
     );
  get diagnostics v_closed = row_count;
  return v_closed;
end
$$;

revoke all on function public.crm_sync_close_abandoned_runs(text)
  from public, anon, authenticated;
grant execute on function public.crm_sync_close_abandoned_runs(text) to service_role;
