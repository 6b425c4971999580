-- The operator's checks of the seed's success metrics (`crm-sync verify`) and the one repair
-- that is always safe (`crm-sync verify --repair`): derived rows (dashboard stats, the credit
-- mirror) are recomputed from their sources; a balance or the ledger is never written here,
-- because no rule can tell which of the two is wrong (defect 20 "repaired" balances from a
-- formula and wiped every CRM customer's free credits).

-- Every mismatch of the four database checks, one row each:
--   credit_accuracy  a balance differs from the sum of its ledger (or a ledger has no profile);
--   credit_mirror    a tracking row's credits differ from its profile's balance;
--   dashboard_stats  a stats row differs from the real counts and last dates, or is missing;
--   data_isolation   an active CRM customer has rows in the regular tables since enrolment (a
--                    linked account's history from before it was enrolled is not a breach),
--                    or a crm_* row's user_id is not the owner of its email.
-- `expected` is what the sources say, `actual` what is stored. Timestamps are shown in UTC so
-- the text does not depend on the session's time zone.
create function public.crm_sync_verify()
returns table ("check" text, email text, user_id uuid, expected text, actual text)
language sql
stable
security definer
set search_path = ''
as $$
  with ledger as (
    select l.user_id, sum(l.delta)::bigint as total
      from public.credit_ledger l
     group by l.user_id
  ),
  balances as (
    select coalesce(p.id, l.user_id) as user_id,
           coalesce(p.email, (select lower(u.email) from auth.users u where u.id = l.user_id))
             as email,
           p.credits_remaining,
           coalesce(l.total, 0) as ledger_total,
           p.id is not null as has_profile
      from public.profiles p
      full join ledger l on l.user_id = p.id
  ),
  applications as (
    select j.email, count(*)::integer as n, max(j.created_at) as last_at
      from public.crm_job_requests j group by j.email
  ),
  recordings as (
    select r.email, count(*)::integer as n, max(r.created_at) as last_at
      from public.crm_recordings r group by r.email
  ),
  resumes as (
    select x.email, count(*)::integer as n from public.crm_resumes x group by x.email
  ),
  stats as (
    select t.email,
           t.user_id,
           s.email is not null as has_row,
           s.user_id as stored_user_id,
           s.total_applications, s.total_recordings, s.total_resumes,
           s.last_application_date, s.last_recording_date,
           coalesce(a.n, 0) as real_applications,
           coalesce(r.n, 0) as real_recordings,
           coalesce(x.n, 0) as real_resumes,
           a.last_at as real_last_application,
           r.last_at as real_last_recording
      from public.digital_resume_by_crm t
      left join public.crm_dashboard_stats s on s.email = t.email
      left join applications a on a.email = t.email
      left join recordings r on r.email = t.email
      left join resumes x on x.email = t.email
  ),
  stats_text as (
    select st.*,
           coalesce(to_char(st.last_application_date at time zone 'UTC',
                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'none') as stored_last_app,
           coalesce(to_char(st.real_last_application at time zone 'UTC',
                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'none') as real_last_app,
           coalesce(to_char(st.last_recording_date at time zone 'UTC',
                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'none') as stored_last_rec,
           coalesce(to_char(st.real_last_recording at time zone 'UTC',
                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'none') as real_last_rec
      from stats st
     where st.has_row
       and (st.stored_user_id, st.total_applications, st.total_recordings, st.total_resumes,
            st.last_application_date, st.last_recording_date)
           is distinct from
           (st.user_id, st.real_applications, st.real_recordings, st.real_resumes,
            st.real_last_application, st.real_last_recording)
  ),
  found as (
    select 'credit_accuracy'::text as "check", b.email, b.user_id,
           'balance ' || b.ledger_total::text || ' (ledger sum)' as expected,
           case when b.has_profile then 'balance ' || b.credits_remaining::text
                else 'no profile' end as actual
      from balances b
     where not b.has_profile or b.credits_remaining <> b.ledger_total

    union all
    select 'credit_mirror', t.email, t.user_id,
           'credits ' || coalesce(p.credits_remaining, 0)::text || ' (profile balance)',
           'credits ' || t.credits_remaining::text
      from public.digital_resume_by_crm t
      left join public.profiles p on p.id = t.user_id
     where t.credits_remaining is distinct from coalesce(p.credits_remaining, 0)

    union all
    select 'dashboard_stats', st.email, st.user_id, 'a stats row', 'no stats row'
      from stats st
     where not st.has_row

    union all
    select 'dashboard_stats', st.email, st.user_id,
           concat_ws(', ',
             case when st.stored_user_id is distinct from st.user_id
                  then 'user_id=' || st.user_id::text end,
             case when st.total_applications <> st.real_applications
                  then 'total_applications=' || st.real_applications::text end,
             case when st.total_recordings <> st.real_recordings
                  then 'total_recordings=' || st.real_recordings::text end,
             case when st.total_resumes <> st.real_resumes
                  then 'total_resumes=' || st.real_resumes::text end,
             case when st.stored_last_app <> st.real_last_app
                  then 'last_application_date=' || st.real_last_app end,
             case when st.stored_last_rec <> st.real_last_rec
                  then 'last_recording_date=' || st.real_last_rec end),
           concat_ws(', ',
             case when st.stored_user_id is distinct from st.user_id
                  then 'user_id=' || st.stored_user_id::text end,
             case when st.total_applications <> st.real_applications
                  then 'total_applications=' || st.total_applications::text end,
             case when st.total_recordings <> st.real_recordings
                  then 'total_recordings=' || st.total_recordings::text end,
             case when st.total_resumes <> st.real_resumes
                  then 'total_resumes=' || st.total_resumes::text end,
             case when st.stored_last_app <> st.real_last_app
                  then 'last_application_date=' || st.stored_last_app end,
             case when st.stored_last_rec <> st.real_last_rec
                  then 'last_recording_date=' || st.stored_last_rec end)
      from stats_text st

    union all
    -- An active CRM customer's rows in the regular tables since enrolment (a linked account's
    -- history from before it is theirs to keep).
    select 'data_isolation', t.email, t.user_id,
           'no rows in ' || r.tbl || ' since enrolment',
           count(*)::text || case when count(*) = 1 then ' row in ' else ' rows in ' end || r.tbl
      from public.digital_resume_by_crm t
      join (
        select 'public.job_requests' as tbl, j.user_id, j.created_at from public.job_requests j
        union all
        select 'public.recordings', x.user_id, x.created_at from public.recordings x
      ) r on r.user_id = t.user_id and r.created_at >= t.created_at
     where t.is_active
     group by r.tbl, t.email, t.user_id

    union all
    -- A CRM row whose user_id is not the owner of its email.
    select 'data_isolation', d.email, d.user_id,
           'user_id ' || t.user_id::text || ' (the email''s owner)',
           count(*)::text || case when count(*) = 1 then ' row in ' else ' rows in ' end || d.tbl
      from (
        select 'public.crm_job_requests' as tbl, j.email, j.user_id from public.crm_job_requests j
        union all
        select 'public.crm_recordings', x.email, x.user_id from public.crm_recordings x
        union all
        select 'public.crm_resumes', z.email, z.user_id from public.crm_resumes z
      ) d
      join public.digital_resume_by_crm t on t.email = d.email
     where d.user_id <> t.user_id
     group by d.tbl, d.email, d.user_id, t.user_id
  )
  select f."check", f.email, f.user_id, f.expected, f.actual
    from found f
   order by f."check", f.email, f.user_id, f.expected, f.actual
$$;

-- Recomputes what verify found wrong in derived rows: each mismatching or missing stats row
-- through refresh_crm_dashboard_stats, each mirror out of step by re-touching its tracking
-- row (the BEFORE trigger crm_credits_follow_profile sets the mirror to the balance). Writes
-- nothing else: balances and the ledger stay as they are, and verify keeps reporting them.
-- Returns how many rows each repair touched.
create function public.crm_sync_repair()
returns table ("check" text, repaired integer)
language plpgsql
volatile
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_stats text[];
  v_mirrors text[];
  v_email text;
  v_mirrored integer;
begin
  select coalesce(array_agg(distinct v.email) filter (where v."check" = 'dashboard_stats'),
                  '{}'::text[]),
         coalesce(array_agg(distinct v.email) filter (where v."check" = 'credit_mirror'),
                  '{}'::text[])
    into v_stats, v_mirrors
    from public.crm_sync_verify() v;

  foreach v_email in array v_stats loop
    perform public.refresh_crm_dashboard_stats(v_email);
  end loop;

  update public.digital_resume_by_crm t
     set updated_at = now()
   where t.email = any (v_mirrors);
  get diagnostics v_mirrored = row_count;

  return query values ('dashboard_stats'::text, cardinality(v_stats)),
                      ('credit_mirror'::text, v_mirrored);
end
$$;

-- Operators only: the checks read every customer's data.
revoke all on function public.crm_sync_verify(), public.crm_sync_repair()
  from public, anon, authenticated;
grant execute on function public.crm_sync_verify(), public.crm_sync_repair() to service_role;
