"""docs/SCHEMA-CURRENT.md is what the migrations produce: regenerated here from the test
database (the bootstrap plus every migration) and compared with the committed page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def schema_view() -> ModuleType:
    """scripts/schema_view.py, loaded as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("schema_view", ROOT / "scripts/schema_view.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("schema_view", module)
    spec.loader.exec_module(module)
    return module


def test_the_committed_schema_view_is_what_the_migrations_produce(
    db: psycopg.Connection[Any],
) -> None:
    view = schema_view()
    expected = view.render(db)
    committed = view.PAGE.read_text(encoding="utf-8")
    if committed != expected:
        diff = view.stale_diff(expected, committed).splitlines()
        shown = "\n".join(diff[:80]) + ("\n..." if len(diff) > 80 else "")
        raise AssertionError(
            f"docs/SCHEMA-CURRENT.md is stale: run `{view.REGENERATE}` and commit the page\n"
            + shown
        )


def test_the_view_holds_every_function_and_table_of_the_schema(
    db: psycopg.Connection[Any],
) -> None:
    page = schema_view().PAGE.read_text(encoding="utf-8")
    functions = db.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'public'"
    ).fetchall()
    tables = db.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind in ('r', 'v')"
    ).fetchall()
    assert len(functions) > 20
    for (name,) in functions:
        assert f"CREATE OR REPLACE FUNCTION public.{name}(" in page, name
    for (name,) in tables:
        assert f"### public.{name}\n" in page, name
    # docs/SCHEMA.md: of their profile, a signed-in user updates full_name only.
    assert "| `public.profiles` | authenticated | UPDATE (full_name) |" in page


def test_a_view_over_one_relation_reads_the_same_on_every_version() -> None:
    view = schema_view()
    fifteen = " SELECT t.a,\n    count(*) AS n\n   FROM public.t\n  GROUP BY t.a;"
    later = " SELECT a,\n    count(*) AS n\n   FROM public.t\n  GROUP BY a;"
    assert view._view_definition(fifteen, ["t"]) == later
    assert view._view_definition(later, ["t"]) == later
    joined = " SELECT t.a\n   FROM public.t\n     JOIN public.u ON u.a = t.a;"
    assert view._view_definition(joined, ["t", "u"]) == joined
