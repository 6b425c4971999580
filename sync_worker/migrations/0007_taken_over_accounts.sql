-- A tracking row may record that crm-sync took over an unconfirmed auth account: anyone can
-- sign up with another person's email and wait for the CRM to credit it (pre-hijacking), so
-- such an account gets fresh credentials and a confirmed email instead of being linked as
-- it is; `crm-sync status` shows the origin.
alter table public.digital_resume_by_crm
  drop constraint digital_resume_by_crm_account_origin_check;
alter table public.digital_resume_by_crm
  add constraint digital_resume_by_crm_account_origin_check
  check (account_origin in ('created', 'linked', 'taken_over'));
