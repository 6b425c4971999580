"""The run history in Supabase: one `crm_sync_runs` row per cycle, opened and closed, keyed by
its run id. `new_run_id` is the one place a run id is minted: at the edge (the command line for
a one-off command, the daemon for each scheduled cycle), then passed down."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog

from sync_worker.customers import Outcome
from sync_worker.errors import SupabaseError
from sync_worker.masking import SecretMasker
from sync_worker.report import CycleReport
from sync_worker.shards import shard_label
from sync_worker.supabase_api import SupabaseApi

log = structlog.get_logger("crm_sync.runs")
ABANDONED = "abandoned"


def new_run_id() -> str:
    """A new run's id: what its log lines, its history row and its recorded emails carry."""
    return uuid.uuid4().hex[:12]


class RunHistory:
    """Writes the run history; a failure to write it never fails the cycle itself."""

    def __init__(
        self,
        api: SupabaseApi,
        worker: str,
        shard: tuple[int, int] = (0, 1),
        *,
        masker: SecretMasker,
    ) -> None:
        self._api = api
        self.worker = worker
        self.shard = None if shard[1] <= 1 else shard_label(shard)
        self._masker = masker  # a run's error is stored masked

    def start(self, run_id: str, started: datetime) -> str | None:
        """Opens the run's row, keyed by its run id (the one every log line carries)."""
        # The id is ours, and a repeated insert is ignored: a retry after a lost answer
        # cannot leave a second row "running" forever.
        history_id = str(uuid.uuid4())
        row = {
            "id": history_id,
            "run_id": run_id,
            "shard": self.shard,
            "worker_id": self.worker,
            "started_at": started.isoformat(),
            "status": "running",
        }
        try:
            self._api.upsert(
                "crm_sync_runs",
                row,
                on_conflict="run_id",
                ignore_duplicates=True,
                operation="start run",
            )
        except SupabaseError as exc:
            log.warning("run_history_unavailable", run_id=run_id, error=str(exc))
            return None
        return history_id

    def close_abandoned(self) -> None:
        """Closes the rows of runs that never finished (killed processes): those whose worker
        holds no lease any more. A sibling shard's live run keeps its lease, and its row."""
        try:
            closed = self._api.rpc(
                "crm_sync_close_abandoned_runs",
                {"p_error": "the process running this cycle stopped without finishing it"},
                operation="close abandoned runs",
            )
        except SupabaseError as exc:
            log.warning("run_history_unavailable", error=str(exc))
            return
        if closed:
            log.warning("abandoned_runs_closed", count=closed)

    def finish(
        self,
        history_id: str | None,
        finished: datetime,
        status: Outcome,
        report: CycleReport | None,
        error: str | None = None,
        *,
        counts: dict[str, Any] | None = None,
    ) -> None:
        if history_id is None:
            return
        values: dict[str, Any] = {
            "finished_at": finished.isoformat(),
            "status": status.value,
            # An error's text may quote what a server said back; no secret is ever stored.
            "error": self._masker.mask_text(error) if error else None,
            "counts": report.log_fields() | {"run_id": report.run_id} if report else counts or {},
        }
        try:
            self._api.update(
                "crm_sync_runs", values, where={"id": history_id}, operation="finish run"
            )
        except SupabaseError as exc:
            log.warning("run_history_unavailable", error=str(exc))
