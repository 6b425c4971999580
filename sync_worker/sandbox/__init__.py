"""A local Supabase-compatible stack (Auth admin API, PostgREST subset, SMTP sink) for tests and the demo."""
