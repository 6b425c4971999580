-- Who may do what. On Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default, so each object of ours gets row-level security, explicit
-- privileges (nothing more than its policies need), and functions are revoked from PUBLIC.
-- A signed-in user reads only their own rows, writes only their own job requests, recordings
-- and resumes, and can never change a balance, a ledger entry or a stats row. `anon` reads and
-- writes nothing. `service_role` (BYPASSRLS) has full access.

-- Tables ------------------------------------------------------------------------------------

do $tables$
declare
  v_table text;
begin
  foreach v_table in array array[
    'profiles', 'payment_details', 'job_requests', 'recordings',
    'digital_resume_by_crm', 'crm_job_requests', 'crm_recordings', 'crm_resumes',
    'crm_dashboard_stats', 'credit_ledger',
    'crm_sync_runs', 'crm_sync_failures', 'crm_sync_lease'
  ] loop
    execute format('alter table public.%I enable row level security', v_table);
    execute format('revoke all on public.%I from public, anon, authenticated', v_table);
    execute format('grant all on public.%I to service_role', v_table);
  end loop;
end
$tables$;

revoke all on sequence public.credit_ledger_id_seq from public, anon, authenticated;
grant usage, select on sequence public.credit_ledger_id_seq to service_role;

-- Read-only for their owner.
grant select on public.payment_details, public.digital_resume_by_crm,
  public.crm_dashboard_stats, public.credit_ledger to authenticated;

drop policy if exists crm_sync_own_rows on public.payment_details;
create policy crm_sync_own_rows on public.payment_details
  for select to authenticated using (user_id = (select auth.uid()));
drop policy if exists crm_sync_own_rows on public.digital_resume_by_crm;
create policy crm_sync_own_rows on public.digital_resume_by_crm
  for select to authenticated using (user_id = (select auth.uid()));
drop policy if exists crm_sync_own_rows on public.crm_dashboard_stats;
create policy crm_sync_own_rows on public.crm_dashboard_stats
  for select to authenticated using (user_id = (select auth.uid()));
drop policy if exists crm_sync_own_rows on public.credit_ledger;
create policy crm_sync_own_rows on public.credit_ledger
  for select to authenticated using (user_id = (select auth.uid()));

-- Profiles: a user reads their own and may edit its descriptive columns (whatever the app
-- has added), but never id, email, the balance or the timestamps. Column privileges make
-- that hold even if the app carries a broader UPDATE policy of its own.
grant select on public.profiles to authenticated;
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

drop policy if exists crm_sync_own_rows on public.profiles;
create policy crm_sync_own_rows on public.profiles
  for select to authenticated using (id = (select auth.uid()));
drop policy if exists crm_sync_edit_own_profile on public.profiles;
create policy crm_sync_edit_own_profile on public.profiles
  for update to authenticated
  using (id = (select auth.uid()))
  with check (id = (select auth.uid()));

-- A regular user's own job requests and recordings.
grant select, insert, update, delete on public.job_requests, public.recordings to authenticated;

drop policy if exists crm_sync_own_rows on public.job_requests;
create policy crm_sync_own_rows on public.job_requests
  for all to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));
drop policy if exists crm_sync_own_rows on public.recordings;
create policy crm_sync_own_rows on public.recordings
  for all to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

-- A CRM customer's own job requests, recordings and resumes: the row's user_id must be theirs
-- and its email their own CRM email.
grant select, insert, update, delete
  on public.crm_job_requests, public.crm_recordings, public.crm_resumes to authenticated;

do $crm_policies$
declare
  v_table text;
begin
  foreach v_table in array array['crm_job_requests', 'crm_recordings', 'crm_resumes'] loop
    execute format('drop policy if exists crm_sync_own_rows on public.%I', v_table);
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
$crm_policies$;

-- Views: the monitoring queries are for operators only.
revoke all on public.crm_user_count, public.crm_data_distribution,
  public.crm_credit_distribution from public, anon, authenticated;
grant select on public.crm_user_count, public.crm_data_distribution,
  public.crm_credit_distribution to service_role;

-- Functions ---------------------------------------------------------------------------------

-- Internal: trigger functions and the ledger primitive are callable by nobody through the API.
revoke all on function
  public.crm_sync_create_profile(),
  public.crm_row_owner(),
  public.apply_credit_entry(uuid, integer, text, text),
  public.grant_credits_on_payment(),
  public.consume_credit_on_recording(),
  public.sync_crm_credits(),
  public.crm_credits_follow_profile(),
  public.refresh_crm_dashboard_stats(text),
  public.update_crm_stats_on_activity()
from public, anon, authenticated, service_role;

-- For signed-in users (each checks that they ask about themselves) and the service role.
revoke all on function
  public.is_crm_user(uuid),
  public.get_crm_dashboard_data(text),
  public.next_credit_pack_price(uuid)
from public, anon, authenticated;
grant execute on function
  public.is_crm_user(uuid),
  public.get_crm_dashboard_data(text),
  public.next_credit_pack_price(uuid)
to authenticated, service_role;

-- The worker's RPCs: service role only.
revoke all on function
  public.enrol_crm_customers(jsonb, integer),
  public.deactivate_crm_customers(text[]),
  public.record_welcome_email(text, text),
  public.acquire_sync_lease(text, integer),
  public.release_sync_lease(text)
from public, anon, authenticated;
grant execute on function
  public.enrol_crm_customers(jsonb, integer),
  public.deactivate_crm_customers(text[]),
  public.record_welcome_email(text, text),
  public.acquire_sync_lease(text, integer),
  public.release_sync_lease(text)
to service_role;
