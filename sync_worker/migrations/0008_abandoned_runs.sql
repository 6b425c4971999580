-- A run whose process was killed (SIGKILL, OOM, a lost node) leaves its history row 'running'
-- for ever. The next run that takes the lease knows nobody else is running a cycle, and closes
-- such rows as 'abandoned', so `crm-sync status` never shows a ghost.
alter table public.crm_sync_runs drop constraint crm_sync_runs_status_check;
alter table public.crm_sync_runs
  add constraint crm_sync_runs_status_check
  check (status in ('running', 'succeeded', 'partial', 'failed', 'interrupted', 'abandoned'));
