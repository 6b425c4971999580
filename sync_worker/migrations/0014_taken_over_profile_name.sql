-- An account crm-sync took over was created by someone who signed up with the customer's
-- email and waited (pre-hijacking); the profile row their sign-up made carries the name they
-- chose ("Security team: call ..."), and enrolment keeps a profile's name once set. When a
-- taken-over account is first tracked, its profile takes the CRM's name instead (none when
-- the CRM has none): nothing the squatter chose is shown to the customer as theirs. (The
-- worker replaces the name in the account's user metadata itself.)
create function public.crm_sync_reset_taken_over_profile()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.profiles
     set full_name = new.full_name,
         updated_at = now()
   where id = new.user_id
     and full_name is distinct from new.full_name;
  return null;
end
$$;

create trigger crm_sync_reset_taken_over_profile
  after insert on public.digital_resume_by_crm
  for each row
  when (new.account_origin = 'taken_over')
  execute function public.crm_sync_reset_taken_over_profile();

revoke all on function public.crm_sync_reset_taken_over_profile()
  from public, anon, authenticated, service_role;
