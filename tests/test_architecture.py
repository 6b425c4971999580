"""The structure docs/ARCHITECTURE.md promises: a core without I/O, one import direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sync_worker"
IO_LIBRARIES = ("psycopg", "httpx", "supabase", "postgrest", "requests", "smtplib", "socket")


def test_the_core_imports_no_io_library() -> None:
    probe = (
        "import sys, sync_worker.plan, sync_worker.settle; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "[]"


# The modules that talk to the world: Supabase, the CRM, the mail server.
ADAPTERS = (
    "supabase_api",
    "record",
    "auth_admin",
    "mailers",
    "source",
    "crm_changes",
    "state",
    "services",
)


def test_the_cycle_imports_no_adapter() -> None:
    """It is given its collaborators (`ports`); fakes stand in for them in the unit tests."""
    probe = (
        "import sys, sync_worker.cycle; "
        "print(sorted(m for m in sys.modules if m.startswith('sync_worker.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert "sync_worker.cycle" in loaded
    assert not [name for name in ADAPTERS if f"'sync_worker.{name}'" in loaded], loaded


def imports_of(path: Path) -> set[str]:
    """The sync_worker modules one file imports (at run time or for type checking alike)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sync_worker":
                found.update(f"sync_worker.{alias.name}" for alias in node.names)
            elif node.module.startswith("sync_worker."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sync_worker."))
    return found


def test_no_import_cycles_and_the_sandbox_stays_outside() -> None:
    modules = {f"sync_worker.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: imports_of(path) & set(modules) for name, path in modules.items()}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        raise AssertionError(f"import cycle: {cycle.args[1]}") from None
    assert set(order) == set(modules)
    for path in modules.values():
        assert "supabase_sandbox" not in path.read_text("utf-8"), path.name


def test_masking_is_not_configuration() -> None:
    """What masks (the logs, the run history, the welcome email) and the local stack take the
    masking helpers from `masking`: none of them imports the configuration."""
    sandbox = PACKAGE.parent / "sandbox" / "supabase_sandbox"
    maskers = ("masking.py", "logs.py", "runs.py", "welcome_email.py")
    for path in [*(PACKAGE / name for name in maskers), *sandbox.glob("*.py")]:
        assert "sync_worker.config" not in imports_of(path), path.name
