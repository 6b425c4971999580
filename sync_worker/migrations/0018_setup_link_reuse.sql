-- A re-sent setup link must not void one that may have arrived. Supabase Auth keeps only a
-- user's newest recovery token (generate_link replaces it), and the link crm-sync sends
-- carries that token's hash, which is what Auth stores in auth.users.recovery_token. So a
-- setup link re-sent while the one before is still young is the same link: the worker reads
-- the stored token back instead of issuing a new one. Nothing new is stored.
create function public.crm_sync_recent_recovery_token(p_user_id uuid, p_max_age_seconds integer)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select u.recovery_token
    from auth.users u
   where u.id = p_user_id
     and coalesce(u.recovery_token, '') <> ''
     and u.recovery_sent_at > clock_timestamp() - make_interval(secs => p_max_age_seconds)
$$;

revoke all on function public.crm_sync_recent_recovery_token(uuid, integer)
  from public, anon, authenticated;
grant execute on function public.crm_sync_recent_recovery_token(uuid, integer) to service_role;
