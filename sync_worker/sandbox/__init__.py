"""A local Supabase-compatible stack (Auth admin API, PostgREST subset, SMTP sink).

Used by the tests, the benchmarks and the demo in place of a hosted Supabase project.
"""
