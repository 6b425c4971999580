-- Signed-in users may update one column of their own profile: full_name.
--
-- 0001 revoked everything on an existing profiles table and then granted UPDATE on every
-- column but id, email, the balance and the timestamps, so a column the live app had kept
-- for itself (is_admin, plan, role) became writable by each user on their own row. crm-sync
-- cannot tell an app's descriptive column from a privileged one, so it grants only the column
-- of this design; an app whose users edit more (avatar_url, say) grants it again itself:
--   grant update (avatar_url) on public.profiles to authenticated;
-- Revoking the table's UPDATE also revokes every column's.
revoke update on public.profiles from authenticated;
grant update (full_name) on public.profiles to authenticated;
