"""Lets `python -m sync_worker` behave exactly like the `crm-sync` console script."""

from __future__ import annotations

from sync_worker.cli import run

run()
