-- Dashboard stats that stay exact (recounted on insert, delete and moves, never just
-- incremented), and the two read functions the app calls: is_crm_user and
-- get_crm_dashboard_data.

-- Recomputes one customer's stats row from the real rows; writes nothing when it is already
-- right. Does nothing for an email that is not (or no longer) enrolled, which is what a
-- cascading delete of the tracking row needs.
create function public.refresh_crm_dashboard_stats(p_email text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_email text := lower(btrim(p_email));
begin
  -- One refresher per customer at a time: a concurrent insert waits here, and the count
  -- below (a new statement, so a new snapshot) then sees every committed row. An advisory
  -- lock, not a row lock: deleting an account locks the tracking row before it cascades to
  -- these rows, and a row lock taken here in the other order could deadlock with it.
  perform pg_advisory_xact_lock(hashtextextended('crm_sync.stats:' || v_email, 0));
  if not exists (select 1 from public.digital_resume_by_crm t where t.email = v_email) then
    return;
  end if;
  insert into public.crm_dashboard_stats as s (
    email, user_id, total_applications, total_recordings, total_resumes,
    last_application_date, last_recording_date, updated_at
  )
  select
    t.email,
    t.user_id,
    (select count(*) from public.crm_job_requests j where j.email = t.email),
    (select count(*) from public.crm_recordings r where r.email = t.email),
    (select count(*) from public.crm_resumes x where x.email = t.email),
    (select max(j.created_at) from public.crm_job_requests j where j.email = t.email),
    (select max(r.created_at) from public.crm_recordings r where r.email = t.email),
    now()
  from public.digital_resume_by_crm t
  where t.email = v_email
  on conflict (email) do update
    set user_id = excluded.user_id,
        total_applications = excluded.total_applications,
        total_recordings = excluded.total_recordings,
        total_resumes = excluded.total_resumes,
        last_application_date = excluded.last_application_date,
        last_recording_date = excluded.last_recording_date,
        updated_at = excluded.updated_at
    where (s.user_id, s.total_applications, s.total_recordings, s.total_resumes,
           s.last_application_date, s.last_recording_date)
      is distinct from
          (excluded.user_id, excluded.total_applications, excluded.total_recordings,
           excluded.total_resumes, excluded.last_application_date, excluded.last_recording_date);
end
$$;

-- One trigger function for the three CRM data tables; the triggers carry the seed's names
-- (update_crm_stats_on_job_request / _recording / _resume).
create function public.update_crm_stats_on_activity()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op in ('INSERT', 'UPDATE') then
    perform public.refresh_crm_dashboard_stats(new.email);
  end if;
  if tg_op = 'DELETE' or (tg_op = 'UPDATE' and old.email is distinct from new.email) then
    perform public.refresh_crm_dashboard_stats(old.email);
  end if;
  return null;
end
$$;

create trigger update_crm_stats_on_job_request
  after insert or delete or update of email, created_at on public.crm_job_requests
  for each row execute function public.update_crm_stats_on_activity();
create trigger update_crm_stats_on_recording
  after insert or delete or update of email, created_at on public.crm_recordings
  for each row execute function public.update_crm_stats_on_activity();
create trigger update_crm_stats_on_resume
  after insert or delete or update of email, created_at on public.crm_resumes
  for each row execute function public.update_crm_stats_on_activity();

-- True for an active CRM customer. A signed-in user may only ask about themselves (anyone
-- else reads as false); the service role and direct database sessions may ask about anyone.
create function public.is_crm_user(p_user_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.digital_resume_by_crm t
    where t.user_id = p_user_id and t.is_active
  )
  and (
    coalesce(auth.jwt() ->> 'role', 'service_role') = 'service_role'
    or p_user_id = (auth.jwt() ->> 'sub')::uuid
  )
$$;

-- The CRM dashboard of one customer. Only for the caller's own email (compared
-- case-insensitively with the email claim of their JWT) or for the service role; anon may not
-- execute it at all.
create function public.get_crm_dashboard_data(p_email text)
returns table (
  email text,
  total_applications integer,
  total_recordings integer,
  total_resumes integer,
  credits_remaining integer,
  last_application_date timestamptz,
  last_recording_date timestamptz
)
language plpgsql
stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_claims jsonb := auth.jwt();
  v_email text := lower(btrim(p_email));
begin
  -- The email claim must be the caller's, and an enrolled email must be enrolled under the
  -- caller's own account: a changed auth email does not hand a dashboard to whoever
  -- registers the old address.
  if coalesce(v_claims ->> 'role', '') <> 'service_role'
     and (v_email is distinct from lower(btrim(v_claims ->> 'email'))
          or exists (select 1 from public.digital_resume_by_crm t
                      where t.email = v_email
                        and t.user_id is distinct from (v_claims ->> 'sub')::uuid)) then
    raise exception 'you may only read your own dashboard' using errcode = '42501';
  end if;
  return query
    select t.email,
           coalesce(s.total_applications, 0),
           coalesce(s.total_recordings, 0),
           coalesce(s.total_resumes, 0),
           coalesce(p.credits_remaining, 0),
           s.last_application_date,
           s.last_recording_date
      from public.digital_resume_by_crm t
      left join public.crm_dashboard_stats s on s.email = t.email
      left join public.profiles p on p.id = t.user_id
     where t.email = v_email;
end
$$;

-- Security ------------------------------------------------------------------------------------
-- Locked down in the same transaction that creates the objects, so no moment exists in which
-- they are open: on Supabase every new table and function in `public` is granted to `anon`
-- and `authenticated` by default (and functions to PUBLIC).

revoke all on function
  public.refresh_crm_dashboard_stats(text),
  public.update_crm_stats_on_activity()
from public, anon, authenticated, service_role;

-- For signed-in users (each checks that they ask about themselves) and the service role.
revoke all on function public.is_crm_user(uuid), public.get_crm_dashboard_data(text)
  from public, anon, authenticated;
grant execute on function public.is_crm_user(uuid), public.get_crm_dashboard_data(text)
  to authenticated, service_role;
