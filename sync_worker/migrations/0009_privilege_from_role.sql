-- Privilege is decided by the database role PostgREST switches to (`set local role`), not by
-- what the JWT claims say: a session as `authenticated` that forges `{"role": "service_role"}`
-- in request.jwt.claims is still `authenticated`, and missing claims are nobody's. Claims are
-- read only where they name the user (sub, email).
--
-- And an insert into a crm_* table naming someone else's email gets the same answer whether or
-- not that email is a CRM customer's, so inserts cannot probe who is a customer.

-- True for the service role (PostgREST's role for the service key) and for a direct session
-- of a role that holds the privilege itself (the owner running migrations, an operator's psql);
-- false for anon and authenticated. `current_setting('role')` is the role set by SET ROLE; a
-- SECURITY DEFINER function changes the current user, not this setting.
create function public.crm_caller_is_privileged()
returns boolean
language sql
stable
set search_path = ''
as $$
  select case coalesce(current_setting('role', true), 'none')
    when 'service_role' then true
    when 'none' then session_user::text not in ('anon', 'authenticated', 'authenticator')
    else false
  end
$$;

create or replace function public.is_crm_user(p_user_id uuid)
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
  and (public.crm_caller_is_privileged() or coalesce(p_user_id = auth.uid(), false))
$$;

create or replace function public.get_crm_dashboard_data(p_email text)
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
  v_email text := lower(btrim(p_email));
begin
  -- The email claim must be the caller's, and an enrolled email must be enrolled under the
  -- caller's own account: a changed auth email does not hand a dashboard to whoever
  -- registers the old address.
  if not public.crm_caller_is_privileged()
     and (v_email is distinct from lower(btrim(auth.email()))
          or exists (select 1 from public.digital_resume_by_crm t
                      where t.email = v_email
                        and t.user_id is distinct from auth.uid())) then
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

-- A signed-in user may only write rows under an email enrolled under their own account; any
-- other email (a customer's or not) gets row-level security's own answer. The service role
-- keeps the precise message.
create or replace function public.crm_row_owner()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_owner uuid;
begin
  new.email := lower(btrim(new.email));
  select t.user_id into v_owner from public.digital_resume_by_crm t where t.email = new.email;
  if not public.crm_caller_is_privileged()
     and (v_owner is null or v_owner is distinct from auth.uid()) then
    raise exception 'new row violates row-level security policy for table "%"', tg_table_name
      using errcode = '42501';
  end if;
  if v_owner is null then
    return new;  -- the foreign key reports the unknown email
  end if;
  if new.user_id is null then
    new.user_id := v_owner;
  elsif new.user_id <> v_owner then
    raise exception 'this row''s user_id does not own the CRM email it names'
      using errcode = '42501';
  end if;
  return new;
end
$$;

revoke all on function public.crm_caller_is_privileged()
  from public, anon, authenticated, service_role;
