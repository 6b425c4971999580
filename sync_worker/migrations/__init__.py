"""The Supabase schema of crm-sync as ordered SQL files, applied by `crm-sync migrate`."""
