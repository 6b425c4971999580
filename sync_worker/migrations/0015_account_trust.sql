-- Account trust: an exact look-up of who holds an email, what a signed-in customer may read of
-- their tracking row, what a credit paid for, and the price from the database role.

-- 1. Who holds an email in Supabase Auth, exactly. The admin API has no look-up by email (its
-- `filter` is a substring LIKE over every user), and Auth's duplicate check on create-user
-- also matches the email of any identity (models.IsDuplicatedEmail), so an address can be
-- taken while no user has it. One row per holder: `via` is 'user' (the user's own email) or
-- 'identity' (an identity's email; `provider` names it), users first. Each branch is served by
-- an index Supabase Auth creates: users_email_partial_key (email), users_instance_id_email_idx
-- (instance_id, lower(email)), identities_email_idx (email, the lower-cased identity email).
create function public.crm_sync_find_auth_account(p_email text)
returns table (
  via text,
  provider text,
  user_id uuid,
  email text,
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  app_metadata jsonb
)
language sql
stable
security definer
set search_path = ''
as $$
  with wanted as (select lower(btrim(p_email)) as email),
  holders as (
    select u.id from auth.users u, wanted w
     where u.email = w.email and not u.is_sso_user
    union
    select u.id from auth.users u, wanted w
     where u.instance_id = '00000000-0000-0000-0000-000000000000'
       and lower(u.email) = w.email and not u.is_sso_user
  )
  select 'user', null::text, u.id, lower(u.email), u.email_confirmed_at, u.last_sign_in_at,
         coalesce(u.raw_app_meta_data, '{}'::jsonb)
    from auth.users u
   where u.id in (select id from holders)
  union all
  select 'identity', i.provider, u.id, lower(u.email), u.email_confirmed_at, u.last_sign_in_at,
         coalesce(u.raw_app_meta_data, '{}'::jsonb)
    from auth.identities i
    join auth.users u on u.id = i.user_id, wanted w
   where i.email = w.email
     and u.id not in (select id from holders)
   order by 1 desc, 3
$$;

revoke all on function public.crm_sync_find_auth_account(text) from public, anon, authenticated;
grant execute on function public.crm_sync_find_auth_account(text) to service_role;

-- 2. A signed-in customer reads of their tracking row only what the app shows them: not the
-- CRM's sales (`payment_details`, lead ids) nor the worker's bookkeeping. The worker (service
-- role) keeps every column.
revoke select on public.digital_resume_by_crm from authenticated;
grant select (email, user_id, full_name, credits_remaining, is_active, deactivated_at,
              user_created_at, created_at, updated_at)
  on public.digital_resume_by_crm to authenticated;

-- 3. A credit pays for one recording as it was inserted: the recording itself (video, duration)
-- cannot be rewritten afterwards, nor replaced through an upsert of the same id (ON CONFLICT DO
-- UPDATE needs UPDATE on those columns), and `created_at` is the database's own (its default;
-- moving it would move the dashboard's `last_recording_date`). A user may still attach a
-- recording to one of their job requests. For the app's own `recordings` (which may have more
-- columns), every column but `created_at` stays insertable; an app whose users edit another
-- column grants it itself: grant update (title) on public.recordings to authenticated;
do $recordings$
declare
  v_table text;
  v_columns text;
begin
  foreach v_table in array array['crm_recordings', 'recordings'] loop
    execute format('revoke insert, update on public.%I from authenticated', v_table);
    select string_agg(quote_ident(c.column_name), ', ' order by c.ordinal_position)
      into v_columns
      from information_schema.columns c
     where c.table_schema = 'public' and c.table_name = v_table
       and c.column_name <> 'created_at'
       and c.is_generated = 'NEVER' and c.identity_generation is distinct from 'ALWAYS';
    execute format('grant insert (%s) on public.%I to authenticated', v_columns, v_table);
    if exists (select 1 from information_schema.columns c
                where c.table_schema = 'public' and c.table_name = v_table
                  and c.column_name = 'job_request_id') then
      execute format('grant update (job_request_id) on public.%I to authenticated', v_table);
    end if;
  end loop;
end
$recordings$;

-- 4. The price of the next credit pack decides "a signed-in user asking" from the database role
-- PostgREST switched to, as every other function does since 0009, not from the JWT's claims.
create or replace function public.next_credit_pack_price(p_user_id uuid default null)
returns numeric
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_user uuid := coalesce(p_user_id, auth.uid());
begin
  if v_user is null then
    raise exception 'a user id is required' using errcode = '22023';
  end if;
  if not public.crm_caller_is_privileged() and v_user is distinct from auth.uid() then
    raise exception 'you may only ask for your own price' using errcode = '42501';
  end if;
  if exists (select 1 from public.digital_resume_by_crm t where t.user_id = v_user)
     or exists (
       select 1 from public.payment_details d where d.user_id = v_user and d.status = 'completed'
     ) then
    return 9.99;
  end if;
  return 12.99;
end
$$;

revoke all on function public.next_credit_pack_price(uuid) from public, anon, authenticated;
grant execute on function public.next_credit_pack_price(uuid) to authenticated, service_role;
