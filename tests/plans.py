"""Plans from two mappings, for tests that state their customers by email: the production
merge (`PlanBuilder`) over the mappings in email order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sync_worker.customers import CrmCustomer, CustomerFailure, TrackedCustomer
from sync_worker.plan import PlanBuilder, SyncPlan


def make_plan(
    customers: Mapping[str, CrmCustomer],
    tracked: Mapping[str, TrackedCustomer],
    failures: Mapping[str, CustomerFailure],
    now: datetime,
) -> SyncPlan:
    """Every customer's step for this cycle.

    Args:
        customers: eligible CRM customers by normalised email (the whole CRM: an email
            missing here is no longer eligible).
        tracked: tracking rows by email.
        failures: recorded failures by email.
        now: the cycle's clock (timezone-aware).
    """
    builder = PlanBuilder((tracked[e] for e in sorted(tracked)), failures, now)
    for email in sorted(customers):
        builder.add_customer(customers[email])
    return builder.finish({})
