"""The plan: every rule of what a cycle does per customer, as a pure function."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sync_worker.crm_text import normalise_email
from sync_worker.customers import (
    MAX_LEAD_ID_LENGTH,
    MAX_STORED_LEAD_IDS,
    AccountOrigin,
    CrmCustomer,
    CrmGroup,
    CrmRow,
    CustomerFailure,
    Step,
    TrackedCustomer,
    customer_from_rows,
)
from sync_worker.plan import Action, PlanBuilder, Provision, SyncPlan, next_attempt_delay
from tests.plans import make_plan

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def crm(email: str, name: str | None = None, lead: str | None = None) -> CrmCustomer:
    return CrmCustomer(email=email, name=name, lead_ids=(lead,) if lead else ())


def tracked(
    email: str,
    *,
    active: bool = True,
    sent: bool = True,
    name: str | None = None,
    lead: str | None = None,
) -> TrackedCustomer:
    return TrackedCustomer(
        email=email,
        user_id="u-" + email,
        is_active=active,
        welcome_email_status="sent" if sent else "pending",
        account_origin=AccountOrigin.CREATED,
        full_name=name,
        crm_lead_id=lead,
    )


def failure(
    email: str, *, attempts: int = 1, due_in: int = -1, parked: bool = False
) -> CustomerFailure:
    return CustomerFailure(
        email=email,
        step=Step.ACCOUNT,
        reason="HTTP 503",
        attempts=attempts,
        next_attempt_at=NOW + timedelta(minutes=due_in),
        parked=parked,
    )


def action_of(plan_steps: object, email: str) -> Action:
    for step in plan_steps:  # type: ignore[attr-defined]
        if step.email == email:
            return step.action  # type: ignore[no-any-return]
    raise AssertionError(email)


@pytest.mark.parametrize(
    ("customer", "row", "expected"),
    [
        (crm("new@x.co"), None, Action.PROVISION),
        (crm("done@x.co"), tracked("done@x.co"), Action.NOTHING),
        (crm("unsent@x.co"), tracked("unsent@x.co", sent=False), Action.RESUME_EMAIL),
        (crm("back@x.co"), tracked("back@x.co", active=False), Action.REACTIVATE),
        (crm("back2@x.co"), tracked("back2@x.co", active=False, sent=False), Action.REACTIVATE),
        (None, tracked("gone@x.co"), Action.DEACTIVATE),
        (None, tracked("gone2@x.co", active=False), Action.NOTHING),
        (crm("renamed@x.co", "New Name"), tracked("renamed@x.co", name="Old"), Action.REFRESH),
        (crm("lead@x.co", lead="AWL-2"), tracked("lead@x.co", lead="AWL-1"), Action.REFRESH),
        (crm("noname@x.co"), tracked("noname@x.co", name="Kept"), Action.NOTHING),
    ],
)
def test_one_decision_per_situation(
    customer: CrmCustomer | None, row: TrackedCustomer | None, expected: Action
) -> None:
    email = customer.email if customer else row.email  # type: ignore[union-attr]
    plan = make_plan({email: customer} if customer else {}, {email: row} if row else {}, {}, NOW)
    assert plan.counts() == {a.value: int(a is expected) for a in Action}
    # A customer who needs nothing is counted, not kept: memory follows the work to do.
    assert [s.action for s in plan.steps] == ([] if expected is Action.NOTHING else [expected])


def test_failures_wait_until_due_and_park_after_max() -> None:
    customers = {e: crm(e) for e in ("due@x.co", "later@x.co", "parked@x.co")}
    failures = {
        "due@x.co": failure("due@x.co", due_in=-1),
        "later@x.co": failure("later@x.co", due_in=+10),
        "parked@x.co": failure("parked@x.co", attempts=8, parked=True),
    }
    plan = make_plan(customers, {}, failures, NOW)
    assert action_of(plan.steps, "due@x.co") is Action.PROVISION
    assert action_of(plan.steps, "later@x.co") is Action.WAIT
    assert action_of(plan.steps, "parked@x.co") is Action.PARKED
    assert plan.counts() | {"provision": 1, "wait": 1, "parked": 1} == plan.counts()


def test_a_failure_never_blocks_deactivation() -> None:
    plan = make_plan(
        {}, {"g@x.co": tracked("g@x.co")}, {"g@x.co": failure("g@x.co", due_in=60)}, NOW
    )
    assert action_of(plan.steps, "g@x.co") is Action.DEACTIVATE


def test_a_fully_done_crm_costs_nothing() -> None:
    emails = [f"c{i}@x.co" for i in range(3000)]
    plan = make_plan({e: crm(e) for e in emails}, {e: tracked(e) for e in emails}, {}, NOW)
    assert plan.counts() == {a.value: 3000 if a is Action.NOTHING else 0 for a in Action}


def test_counts_cover_every_action_and_order_is_stable() -> None:
    plan = make_plan({"b@x.co": crm("b@x.co"), "a@x.co": crm("a@x.co")}, {}, {}, NOW)
    assert [s.email for s in plan.steps] == ["a@x.co", "b@x.co"]
    assert set(plan.counts()) == {a.value for a in Action}
    assert plan.counts()["provision"] == 2


def test_backoff_doubles_and_is_capped() -> None:
    assert next_attempt_delay(1) == timedelta(minutes=5)
    assert next_attempt_delay(2) == timedelta(minutes=10)
    assert next_attempt_delay(4) == timedelta(minutes=40)
    assert next_attempt_delay(30) == timedelta(hours=6)


def group(key: str, *raws: str) -> CrmGroup:
    return CrmGroup(key, tuple(CrmRow(raw, "49.99") for raw in raws))


def test_the_merge_validates_only_emails_not_yet_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Email validation costs nothing for customers already synced and unchanged."""
    from sync_worker import customers as customers_module

    validated: list[str | None] = []

    def counting(raw: str | None) -> tuple[str | None, str | None]:
        validated.append(raw)
        return normalise_email(raw)

    monkeypatch.setattr(customers_module, "normalise_email", counting)
    builder = PlanBuilder([tracked("a@x.co"), tracked("c@x.co")], {}, NOW)
    for item in (group("a@x.co", " A@X.co"), group("b@x.co", "B@x.co"), group("c@x.co", "c@x.co")):
        builder.add_group(item)
    plan = builder.finish({})
    assert validated == ["B@x.co"]
    assert plan.counts()["nothing"] == 2
    assert plan.counts()["provision"] == 1
    assert [s.email for s in plan.steps] == ["b@x.co"]
    assert (plan.eligible, plan.active) == (3, 2)


def test_a_customer_the_merge_cannot_place_is_planned_from_its_looked_up_row() -> None:
    """An internationalised domain sorts by its Unicode form in the CRM and by its ASCII form
    in the tracking table: set aside, looked up, and never deactivated by mistake."""
    idna = "ann@xn--bcher-kva.example"
    builder = PlanBuilder(
        [tracked("a@x.co"), tracked(idna), tracked("z@x.co", active=False)], {}, NOW
    )
    builder.add_group(group("a@x.co", "a@x.co"))
    builder.add_group(group("ann@b\u00fccher.example", "Ann@B\u00fccher.example"))
    builder.add_group(group("z@x.co", "z@x.co"))
    assert list(builder.set_aside) == [idna]
    plan = builder.finish({idna: tracked(idna)})
    assert plan.counts() == {
        a.value: {"nothing": 2, "reactivate": 1}.get(a.value, 0) for a in Action
    }
    assert [(s.email, s.action) for s in plan.steps] == [("z@x.co", Action.REACTIVATE)]
    assert plan.eligible == 3


def test_a_no_op_plan_keeps_nothing_in_memory() -> None:
    emails = [f"c{i:05}@x.co" for i in range(20_000)]
    builder = PlanBuilder((tracked(e) for e in emails), {}, NOW)
    for email in emails:
        builder.add_group(group(email, email))
    plan = builder.finish({})
    assert plan.steps == ()
    assert plan.counts()["nothing"] == 20_000


def test_two_spellings_of_one_new_email_make_one_step() -> None:
    """The CRM holds a customer once as typed and once with a pasted no-break space: the first
    is merged in order, the second set aside; both are one customer, provisioned once."""
    builder = PlanBuilder([], {}, NOW)
    builder.add_group(
        CrmGroup("new@x.co", (CrmRow("new@x.co", "100", "Ann", "L1"),)),
    )
    builder.add_group(
        CrmGroup("new@x.co\u00a0", (CrmRow("new@x.co\u00a0", "50", "Anne B", "L2"),)),
    )
    assert list(builder.set_aside) == ["new@x.co"]
    plan = builder.finish({})
    [step] = plan.steps
    assert (step.email, step.action) == ("new@x.co", Action.PROVISION)
    assert isinstance(step, Provision)
    assert step.customer.lead_ids == ("L1", "L2")
    assert step.customer.sale_rows == 2
    assert plan.eligible == 1
    assert plan.counts()["provision"] == 1


def customers_of(plan: SyncPlan) -> dict[str, CrmCustomer]:
    return {step.email: step.customer for step in plan.steps if step.customer is not None}


def test_the_merge_of_one_customers_rows_is_pure() -> None:
    builder = PlanBuilder([], {}, NOW)
    builder.add_group(
        CrmGroup(
            "b@x.co",
            (
                CrmRow("b@x.co", "1", None, "L2"),
                CrmRow(" B@X.CO", "2", "Bea", "L1"),
                CrmRow("b@x.co", "3", "Other", "L2"),
            ),
        )
    )
    [customer] = customers_of(builder.finish({})).values()
    assert (customer.name, customer.lead_ids, customer.sale_rows, customer.sale_value) == (
        "Bea",
        ("L1", "L2"),
        3,
        Decimal(6),
    )


def test_one_customer_in_two_normal_forms_is_one_customer() -> None:
    """The CRM sorts the two forms apart (the decomposed one first, byte by byte); both are
    set aside and merged into one customer."""
    builder = PlanBuilder([], {}, NOW)
    for raw, value, lead in (
        ("ann@bu\u0308cher.example", "2", "L2"),
        ("ann@b\u00fccher.example", "1", "L1"),
    ):
        builder.add_group(CrmGroup(raw, (CrmRow(raw, value, None, lead),)))
    customers = customers_of(builder.finish({}))
    assert list(customers) == ["ann@xn--bcher-kva.example"]
    assert customers["ann@xn--bcher-kva.example"].sale_rows == 2


def test_what_a_tracking_row_keeps_of_the_crm_sales_is_bounded() -> None:
    """3,000 sale rows with long lead ids keep a small, bounded record."""
    rows = [
        CrmRow("many@example.com", "1", lead_id=f"AWL-{n:05d}-" + "x" * 500) for n in range(3000)
    ]
    customer = customer_from_rows("many@example.com", rows)
    details = customer.payment_details()
    assert details["sale_rows"] == 3000
    assert details["lead_id_count"] == 3000
    assert len(details["lead_ids"]) == MAX_STORED_LEAD_IDS
    assert all(len(lead) <= MAX_LEAD_ID_LENGTH for lead in details["lead_ids"])
    assert customer.lead_id is not None
    assert len(customer.lead_id) <= MAX_LEAD_ID_LENGTH
    assert len(json.dumps(details)) < 2000


def test_a_customer_whose_rows_cannot_be_read_is_reported_and_left_as_they_are() -> None:
    """`49 USD` in a text column is an invalid row, not a refund: the
    enrolled customer is not deactivated for it; only a readable "not eligible" deactivates."""
    builder = PlanBuilder(
        [tracked("gone@x.co"), tracked("typo@x.co"), tracked("zed@x.co")], {}, NOW
    )
    builder.add_group(CrmGroup("typo@x.co", (CrmRow("Typo@x.co", "49 USD", readable=False),)))
    builder.add_group(group("zed@x.co", "zed@x.co"))
    plan = builder.finish({})
    assert [(s.email, s.action) for s in plan.steps] == [("gone@x.co", Action.DEACTIVATE)]
    assert [row.raw_email for row in builder.tally.invalid] == ["Typo@x.co"]
    assert plan.counts()["nothing"] == 2
