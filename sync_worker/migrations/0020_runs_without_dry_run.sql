-- crm_sync_runs.dry_run (0005) was never set: a dry run writes nothing, not even its row in the
-- run history, so every row says false. `crm-sync status` read it and would have shown
-- "(dry run)" for a run that cannot be there. Dropped, so nothing reads a flag nobody writes.
alter table public.crm_sync_runs drop column if exists dry_run;
