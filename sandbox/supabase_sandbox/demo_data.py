"""Demo data: a CRM database with a realistic `sales_closure` table, and a few regular app users
who already have an account (with a known password) before the worker first runs."""

# The rows exercise every path of the worker: repeat customers with several sales, emails in mixed
# case or padded with spaces, NULL and 0 eligibility values, one invalid email, and CRM customers
# who already have an account and must be linked, not re-created.

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from supabase_sandbox.auth_users import UserStore, hash_password

# Known on purpose: the demo signs in as these users to show their account survived linking.
EXISTING_USER_PASSWORD = "Existing-User-2024"  # noqa: S105 (a demo fixture, not a secret)
CRM_TABLE = "sales_closure"


@dataclass(frozen=True, slots=True)
class Sale:
    lead_id: str
    lead_name: str
    email: str | None
    company_email: str | None
    digital_value: Decimal | None
    sale_value: Decimal
    plan: str
    days_ago: int


@dataclass(frozen=True, slots=True)
class ExistingUser:
    """A regular app user created before the sync (as if they had signed up themselves)."""

    email: str
    full_name: str


EXISTING_USERS = (
    ExistingUser("meera.iyer@example.com", "Meera Iyer"),
    ExistingUser("daniel.okafor@example.org", "Daniel Okafor"),
    ExistingUser("sofia.martinez@example.net", "Sofia Martinez"),
)

_D = Decimal


def _sales() -> Iterator[Sale]:
    """About fifty sale rows; comments say which case each group exercises."""
    eligible: list[tuple[str, str, str, Decimal | None]] = [
        ("AWL-1001", "Priya Sharma", "priya.sharma@example.com", _D("49.00")),
        ("AWL-1002", "Arjun Patel", "arjun.patel@example.com", _D("49.00")),
        ("AWL-1003", "Emily Johnson", "emily.johnson@example.org", _D("59.00")),
        ("AWL-1004", "Rohan Gupta", "rohan.gupta@example.net", _D("49.00")),
        ("AWL-1005", "Ananya Rao", "ananya.rao@example.com", _D("39.99")),
        ("AWL-1006", "Michael Chen", "michael.chen@example.com", _D("49.00")),
        ("AWL-1007", "Sneha Kulkarni", "sneha.kulkarni@example.org", _D("49.00")),
        ("AWL-1008", "David Wilson", "david.wilson@example.net", _D("0.01")),
        ("AWL-1009", "Kavya Nair", "kavya.nair@example.com", _D("49.00")),
        ("AWL-1010", "James Brown", "james.brown@example.org", _D("79.00")),
        ("AWL-1011", "Aditi Singh", "aditi.singh@example.com", _D("49.00")),
        ("AWL-1012", "Vikram Joshi", "vikram.joshi@example.net", _D("49.00")),
        ("AWL-1013", "Olivia Davis", "olivia.davis@example.com", _D("49.00")),
        ("AWL-1014", "Nikhil Menon", "nikhil.menon@example.org", _D("49.00")),
        ("AWL-1015", "Harini Krishnan", "harini.krishnan@example.com", _D("49.00")),
    ]
    day = 400
    for lead_id, name, email, value in eligible:
        day -= 7
        yield Sale(lead_id, name, email, None, value, _D("499.00"), "Premium", day)

    # Mixed case and padding: the same person as far as the worker is concerned.
    yield Sale(
        "AWL-1016",
        "Rahul Verma",
        "  Rahul.Verma@Example.com ",
        None,
        _D("49.00"),
        _D("399.00"),
        "Standard",
        280,
    )
    yield Sale(
        "AWL-1017",
        "Lakshmi Pillai",
        "LAKSHMI.PILLAI@EXAMPLE.ORG",
        "lakshmi@company.example",
        _D("49.00"),
        _D("399.00"),
        "Standard",
        270,
    )
    yield Sale(
        "AWL-1018",
        "Thomas Anderson",
        "Thomas.Anderson@example.net\t",
        None,
        _D("49.00"),
        _D("499.00"),
        "Premium",
        260,
    )

    # Repeat customers: several sales, one customer each.
    yield Sale(
        "AWL-1019",
        "Deepak Reddy",
        "deepak.reddy@example.com",
        None,
        _D("49.00"),
        _D("499.00"),
        "Premium",
        250,
    )
    yield Sale(
        "AWL-1019",
        "Deepak Reddy",
        "Deepak.Reddy@example.com",
        None,
        _D("29.00"),
        _D("199.00"),
        "Upgrade",
        120,
    )
    yield Sale(
        "AWL-1019",
        "Deepak Reddy",
        "deepak.reddy@example.com ",
        None,
        None,
        _D("99.00"),
        "Renewal",
        30,
    )
    yield Sale(
        "AWL-1020",
        "Sarah Miller",
        "sarah.miller@example.org",
        None,
        _D("0"),
        _D("399.00"),
        "Standard",
        240,
    )
    yield Sale(
        "AWL-1020",
        "Sarah Miller",
        "sarah.miller@example.org",
        None,
        _D("49.00"),
        _D("99.00"),
        "Digital Resume",
        60,
    )
    yield Sale(
        "AWL-1021",
        "Ishaan Bose",
        "ishaan.bose@example.net",
        None,
        _D("49.00"),
        _D("499.00"),
        "Premium",
        230,
    )
    yield Sale(
        "AWL-1021",
        "Ishaan Bose",
        "ISHAAN.BOSE@example.net",
        None,
        _D("49.00"),
        _D("499.00"),
        "Premium",
        90,
    )
    yield Sale(
        "AWL-1022",
        "Fatima Khan",
        "fatima.khan@example.com",
        None,
        _D("49.00"),
        _D("399.00"),
        "Standard",
        220,
    )
    yield Sale(
        "AWL-1022",
        "Fatima Khan",
        "fatima.khan@example.com",
        None,
        _D("0"),
        _D("149.00"),
        "Interview Prep",
        45,
    )

    # Not eligible: no Digital Resume sale (NULL or 0).
    not_eligible: list[tuple[str, str, str | None, Decimal | None]] = [
        ("AWL-1023", "Karan Malhotra", "karan.malhotra@example.com", None),
        ("AWL-1024", "Jessica Taylor", "jessica.taylor@example.org", _D("0")),
        ("AWL-1025", "Suresh Iyengar", "suresh.iyengar@example.net", None),
        ("AWL-1026", "Pooja Desai", "pooja.desai@example.com", _D("0.00")),
        ("AWL-1027", "Christopher Lee", "christopher.lee@example.org", None),
        ("AWL-1028", "Divya Chatterjee", "divya.chatterjee@example.com", _D("0")),
        ("AWL-1029", "Manoj Tiwari", "manoj.tiwari@example.net", None),
        ("AWL-1030", "Amanda Clark", "amanda.clark@example.com", None),
        ("AWL-1031", "Ritu Saxena", "ritu.saxena@example.org", _D("0")),
        ("AWL-1032", "Gaurav Mehta", None, None),
    ]
    day = 210
    for lead_id, name, maybe_email, value in not_eligible:
        day -= 6
        yield Sale(lead_id, name, maybe_email, None, value, _D("299.00"), "Standard", day)

    # Invalid email on an eligible sale: reported, never provisioned, until the CRM is fixed.
    yield Sale(
        "AWL-1033",
        "Kiran Reddy",
        "kiran.reddy@@example.com",
        None,
        _D("49.00"),
        _D("399.00"),
        "Standard",
        140,
    )
    # Eligible sale without any email at all.
    yield Sale(
        "AWL-1034",
        "Neha Agarwal",
        None,
        "neha@company.example",
        _D("49.00"),
        _D("399.00"),
        "Standard",
        135,
    )

    # Customers who already have an app account (see EXISTING_USERS): link, never reset.
    yield Sale(
        "AWL-1035",
        "Meera Iyer",
        "Meera.Iyer@example.com",
        None,
        _D("49.00"),
        _D("499.00"),
        "Premium",
        130,
    )
    yield Sale(
        "AWL-1036",
        "Daniel Okafor",
        "daniel.okafor@example.org",
        None,
        _D("49.00"),
        _D("399.00"),
        "Standard",
        125,
    )
    yield Sale(
        "AWL-1036",
        "Daniel Okafor",
        "daniel.okafor@example.org",
        None,
        _D("29.00"),
        _D("99.00"),
        "Upgrade",
        20,
    )
    yield Sale(
        "AWL-1037",
        "Sofia Martinez",
        " sofia.martinez@example.net",
        None,
        _D("49.00"),
        _D("399.00"),
        "Standard",
        110,
    )

    # Recent sales, including today's.
    recent: list[tuple[str, str, str, Decimal | None]] = [
        ("AWL-1038", "Aryan Kapoor", "aryan.kapoor@example.com", _D("49.00")),
        ("AWL-1039", "Grace Thompson", "grace.thompson@example.org", _D("49.00")),
        ("AWL-1040", "Siddharth Jain", "siddharth.jain@example.net", _D("49.00")),
        ("AWL-1041", "Nandini Hegde", "nandini.hegde@example.com", _D("59.00")),
        ("AWL-1042", "Ryan Martinez", "ryan.martinez@example.org", _D("49.00")),
        ("AWL-1043", "Tanvi Bhatt", "tanvi.bhatt@example.com", _D("49.00")),
        ("AWL-1044", "Abhishek Yadav", "abhishek.yadav@example.net", None),
        ("AWL-1045", "Laura Garcia", "laura.garcia@example.com", _D("49.00")),
    ]
    day = 15
    for lead_id, name, email, value in recent:
        day -= 2
        yield Sale(lead_id, name, email, None, value, _D("399.00"), "Standard", max(day, 0))


def demo_sales() -> list[Sale]:
    """The rows of the demo `sales_closure`, in insertion order."""
    return list(_sales())


def create_crm_tables(crm_url: str, now: datetime | None = None) -> int:
    """Creates and fills `sales_closure` in an empty CRM database; returns the row count.

    Both eligibility columns exist: `digital_sale_resume` (the seed's name, crm-sync's default)
    and `digital_resume_sale_value` (the live CRM's), with the same values.
    """
    moment = now or datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    sales = demo_sales()
    with psycopg.connect(crm_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            sql.SQL(
                "create table {} ("
                " id bigint generated always as identity primary key,"
                " lead_id text not null,"
                " lead_name text,"
                " email text,"
                " company_application_email text,"
                " digital_sale_resume numeric(10, 2),"
                " digital_resume_sale_value numeric(10, 2),"
                " sale_value numeric(10, 2),"
                " plan_name text,"
                " sales_rep text,"
                " closed_at timestamptz not null)"
            ).format(sql.Identifier(CRM_TABLE))
        )
        reps = ("Anita", "Bharat", "Chloe", "Dev")
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "insert into {} (lead_id, lead_name, email, company_application_email,"
                    " digital_sale_resume, digital_resume_sale_value, sale_value, plan_name,"
                    " sales_rep, closed_at) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ).format(sql.Identifier(CRM_TABLE)),
                [
                    (
                        sale.lead_id,
                        sale.lead_name,
                        sale.email,
                        sale.company_email,
                        sale.digital_value,
                        sale.digital_value,
                        sale.sale_value,
                        sale.plan,
                        reps[index % len(reps)],
                        moment - timedelta(days=sale.days_ago, hours=index % 9),
                    )
                    for index, sale in enumerate(sales)
                ],
            )
    return len(sales)


def create_existing_users(db_url: str, *, bcrypt_cost: int = 10) -> list[str]:
    """Creates EXISTING_USERS in `auth.users` as confirmed email users; returns their ids.

    Written through the same SQL as the Auth API, so triggers on `auth.users` run as they would
    for a real sign-up.
    """
    encrypted = hash_password(EXISTING_USER_PASSWORD, bcrypt_cost)
    ids: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        store = UserStore(conn)
        for user in EXISTING_USERS:
            user_id = str(uuid.uuid4())
            metadata: dict[str, Any] = {"full_name": user.full_name}
            store.insert_user(
                user_id=user_id,
                aud="authenticated",
                email=user.email,
                encrypted_password=encrypted,
                user_metadata=metadata,
                app_metadata={"provider": "email", "providers": ["email"]},
            )
            store.insert_identity(
                user_id,
                "email",
                {
                    "sub": user_id,
                    "email": user.email,
                    "email_verified": True,
                    "phone_verified": False,
                },
            )
            store.update(user_id, role="authenticated")
            store.update(user_id, confirmation_token="", email_confirmed_at=datetime.now(UTC))
            store.merge_metadata(user_id, "raw_user_meta_data", {"email_verified": True})
            ids.append(user_id)
    return ids
