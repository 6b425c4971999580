-- The worker reads every tracking row each cycle, merged with the CRM stream: both sorted by
-- email in byte order (COLLATE "C", as the worker compares them), and paged by keyset (the
-- rows after the last email of the previous page), never by OFFSET, whose cost grows with
-- every page. The index serves that order.
create index digital_resume_by_crm_email_c_idx
  on public.digital_resume_by_crm (email collate "C");

create function public.crm_sync_tracking_page(p_after text, p_limit integer)
returns table (
  email text,
  user_id uuid,
  is_active boolean,
  welcome_email_status text,
  account_origin text,
  full_name text,
  crm_lead_id text,
  credits_remaining integer
)
language sql
stable
set search_path = ''
as $$
  select t.email, t.user_id, t.is_active, t.welcome_email_status, t.account_origin,
         t.full_name, t.crm_lead_id, t.credits_remaining
    from public.digital_resume_by_crm t
   where t.email collate "C" > coalesce(p_after, '') collate "C"
   order by t.email collate "C"
   limit least(greatest(p_limit, 1), 50000)
$$;

revoke all on function public.crm_sync_tracking_page(text, integer)
  from public, anon, authenticated;
grant execute on function public.crm_sync_tracking_page(text, integer) to service_role;
