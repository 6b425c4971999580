"""One customer on their way through a cycle: a frozen value each stage enriches.

A customer to provision starts as their CRM record; the account stage adds their account
(and, when it created one, the password it set), the enrolment stage the RPC's answer (their
credits, whether the welcome email is still owed). The email stage reads everything the
message needs from this one value: nothing is joined back by email from side tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sync_worker.customers import (
    AccountOrigin,
    CrmCustomer,
    Enrolment,
    EnrolmentResult,
    TrackedCustomer,
)

__all__ = ["CustomerWork"]


@dataclass(frozen=True, slots=True)
class CustomerWork:
    """A customer and what the cycle has learnt of them so far.

    Attributes:
        customer: the CRM's record (email, name, lead ids).
        user_id: their auth account, once known.
        origin: how crm-sync came by that account.
        credits: the credits they hold (after enrolment).
        just_created: this cycle created or found the account (its state was read just now:
            nobody has signed in to an account created a moment ago).
        password: the temporary password this cycle set when it created the account.
        enrolment: what the enrolment RPC answered, once enrolled in this cycle.
    """

    customer: CrmCustomer
    user_id: str | None = None
    origin: AccountOrigin | None = None
    credits: int = 0
    just_created: bool = False
    password: str | None = field(default=None, repr=False)
    enrolment: EnrolmentResult | None = None

    @property
    def email(self) -> str:
        return self.customer.email

    @property
    def name(self) -> str | None:
        return self.customer.name

    @classmethod
    def tracked(cls, customer: CrmCustomer, row: TrackedCustomer) -> CustomerWork:
        """An enrolled customer, as their tracking row knows them."""
        return cls(customer, row.user_id, row.account_origin, row.credits_remaining)

    def with_account(
        self, user_id: str, origin: AccountOrigin, password: str | None
    ) -> CustomerWork:
        """The account stage's result: the account this cycle created, resumed or linked."""
        return replace(self, user_id=user_id, origin=origin, password=password, just_created=True)

    def enrolled(self, result: EnrolmentResult) -> CustomerWork:
        """The enrolment stage's result: the tracking row as the RPC left it."""
        return replace(
            self,
            user_id=result.user_id or self.user_id,
            origin=result.account_origin or AccountOrigin.CREATED,
            credits=result.credits_remaining or 0,
            enrolment=result,
        )

    @property
    def owes_email(self) -> bool:
        """Whether a welcome email is still owed (unknown before enrolment: owed)."""
        if self.enrolment is not None:
            return not self.enrolment.welcome_email_sent and bool(self.enrolment.user_id)
        return self.user_id is not None

    def as_enrolment(self) -> Enrolment:
        """What the enrolment RPC is sent for this customer."""
        if self.user_id is None or self.origin is None:
            raise ValueError(f"{self.email} has no account to enrol yet")
        return Enrolment(self.customer, self.user_id, self.origin)
