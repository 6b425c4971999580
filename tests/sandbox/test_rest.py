"""The PostgREST subset through supabase-py and raw HTTP: reads, writes, RPC, grants and RLS.

Statuses and bodies follow PostgREST src/library/PostgREST/Error.hs and Response.hs.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import Client

from supabase_sandbox import Sandbox


@pytest.fixture
def notes(sandbox: Sandbox, service: Client) -> Client:
    """An empty `notes` table, as the service role sees it."""
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute("truncate public.notes restart identity")
        conn.execute("truncate public.vault")
    return service


def rest_headers(sandbox: Sandbox, token: str | None = None) -> dict[str, str]:
    key = sandbox.service_role_key if token is None else sandbox.anon_key
    return {"apikey": key, "Authorization": f"Bearer {token or sandbox.service_role_key}"}


def seed(service: Client, owner: str) -> None:
    rows = [
        {"user_id": owner, "slug": f"n{i}", "body": body, "rank": rank, "tag": tag}
        for i, (body, rank, tag) in enumerate(
            [
                ("Alpha", 1, "plain"),
                ("beta", 2, "star"),
                ("Gamma ray", 3, None),
                ("delta, with comma", 4, "star"),
                ("epsilon", None, "plain"),
            ]
        )
    ]
    service.table("notes").insert(rows).execute()


OWNER = "11111111-1111-1111-1111-111111111111"


def test_select_with_filters_order_and_paging(notes: Client) -> None:
    seed(notes, OWNER)

    def bodies(query: object) -> list[str]:
        return [row["body"] for row in query.execute().data]  # type: ignore[attr-defined]

    table = notes.table("notes")
    assert bodies(table.select("body").eq("tag", "star").order("id")) == [
        "beta",
        "delta, with comma",
    ]
    assert bodies(table.select("body").neq("tag", "star").order("id")) == ["Alpha", "epsilon"]
    assert bodies(table.select("body").gt("rank", 2).order("id")) == [
        "Gamma ray",
        "delta, with comma",
    ]
    assert bodies(table.select("body").gte("rank", 2).lt("rank", 4).order("id")) == [
        "beta",
        "Gamma ray",
    ]
    assert bodies(table.select("body").lte("rank", 1)) == ["Alpha"]
    assert bodies(table.select("body").in_("body", ["beta", "delta, with comma"]).order("id")) == [
        "beta",
        "delta, with comma",
    ]
    assert bodies(table.select("body").is_("tag", None)) == ["Gamma ray"]
    assert bodies(table.select("body").like("body", "%a r%")) == ["Gamma ray"]
    assert bodies(table.select("body").ilike("body", "alpha")) == ["Alpha"]
    assert bodies(
        table.select("body").not_.is_("rank", None).order("rank", desc=True).limit(2)
    ) == [
        "delta, with comma",
        "Gamma ray",
    ]
    assert bodies(table.select("body").order("rank", nullsfirst=True).range(0, 1)) == [
        "epsilon",
        "Alpha",
    ]
    assert bodies(table.select("body").order("id").offset(3).limit(5)) == [
        "delta, with comma",
        "epsilon",
    ]


def test_select_columns_alias_and_star(notes: Client) -> None:
    seed(notes, OWNER)

    [aliased] = notes.table("notes").select("name:body,rank").eq("slug", "n1").execute().data
    [full] = notes.table("notes").select("*").eq("slug", "n1").execute().data

    assert aliased == {"name": "beta", "rank": 2}
    assert set(full) == {"id", "user_id", "slug", "body", "rank", "tag"}


def test_count_exact_and_range_headers(sandbox: Sandbox, notes: Client) -> None:
    seed(notes, OWNER)

    counted = notes.table("notes").select("id", count="exact").order("id").limit(2).execute()
    raw = httpx.get(
        f"{sandbox.url}/rest/v1/notes",
        headers={**rest_headers(sandbox), "Range": "1-2", "Prefer": "count=exact"},
        params={"select": "slug", "order": "id"},
    )
    beyond = httpx.get(
        f"{sandbox.url}/rest/v1/notes",
        headers={**rest_headers(sandbox), "Prefer": "count=exact"},
        params={"offset": "9"},
    )

    assert counted.count == 5
    assert len(counted.data) == 2
    assert raw.status_code == 206
    assert raw.headers["Content-Range"] == "1-2/5"
    assert raw.json() == [{"slug": "n1"}, {"slug": "n2"}]
    assert beyond.status_code == 416
    assert beyond.json()["code"] == "PGRST103"


def test_insert_returns_201_and_representation_or_nothing(sandbox: Sandbox, notes: Client) -> None:
    inserted = notes.table("notes").insert({"user_id": OWNER, "body": "one"}).execute()
    minimal = httpx.post(
        f"{sandbox.url}/rest/v1/notes",
        headers={**rest_headers(sandbox), "Prefer": "return=minimal"},
        json=[{"user_id": OWNER, "body": "two"}, {"user_id": OWNER, "body": "three"}],
    )

    assert inserted.data[0]["body"] == "one"
    assert inserted.data[0]["tag"] == "plain"  # column default
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["Content-Range"] == "*/*"
    assert len(notes.table("notes").select("id").execute().data) == 3


def test_upsert_merges_on_conflict_and_reports_200_when_nothing_was_new(
    sandbox: Sandbox, notes: Client
) -> None:
    first = httpx.post(
        f"{sandbox.url}/rest/v1/notes",
        headers={
            **rest_headers(sandbox),
            "Prefer": "return=representation,resolution=merge-duplicates",
        },
        params={"on_conflict": "slug"},
        json=[{"user_id": OWNER, "slug": "a", "body": "v1", "rank": 1}],
    )
    again = (
        notes.table("notes")
        .upsert([{"user_id": OWNER, "slug": "a", "body": "v2", "rank": 2}], on_conflict="slug")
        .execute()
    )
    raw_again = httpx.post(
        f"{sandbox.url}/rest/v1/notes",
        headers={**rest_headers(sandbox), "Prefer": "return=minimal,resolution=merge-duplicates"},
        params={"on_conflict": "slug"},
        json=[{"user_id": OWNER, "slug": "a", "body": "v3", "rank": 3}],
    )
    ignored = (
        notes.table("notes")
        .upsert(
            {"user_id": OWNER, "slug": "a", "body": "ignored"},
            on_conflict="slug",
            ignore_duplicates=True,
        )
        .execute()
    )

    assert first.status_code == 201
    assert (
        first.headers["Preference-Applied"] == "resolution=merge-duplicates, return=representation"
    )
    assert again.data[0]["body"] == "v2"
    assert raw_again.status_code == 200
    assert ignored.data == []
    [row] = notes.table("notes").select("body,rank").eq("slug", "a").execute().data
    assert row == {"body": "v3", "rank": 3}


def test_upsert_columns_missing_keys_become_null_unless_missing_default(notes: Client) -> None:
    notes.table("notes").upsert(
        [
            {"user_id": OWNER, "slug": "x", "body": "has tag", "tag": "star"},
            {"user_id": OWNER, "slug": "y", "body": "no tag"},
        ],
        on_conflict="slug",
    ).execute()
    notes.table("notes").upsert(
        [
            {"user_id": OWNER, "slug": "z", "body": "has tag", "tag": "star"},
            {"user_id": OWNER, "slug": "w", "body": "no tag"},
        ],
        on_conflict="slug",
        default_to_null=False,
    ).execute()

    tags = {
        row["slug"]: row["tag"] for row in notes.table("notes").select("slug,tag").execute().data
    }
    assert tags == {"x": "star", "y": None, "z": "star", "w": "plain"}


def test_patch_and_delete(sandbox: Sandbox, notes: Client) -> None:
    seed(notes, OWNER)

    patched = notes.table("notes").update({"tag": "edited"}).eq("tag", "star").execute()
    quiet = httpx.patch(
        f"{sandbox.url}/rest/v1/notes",
        headers={**rest_headers(sandbox), "Prefer": "return=minimal"},
        params={"slug": "eq.n0"},
        json={"rank": 100},
    )
    deleted = notes.table("notes").delete().in_("slug", ["n0", "n4"]).execute()

    assert sorted(row["slug"] for row in patched.data) == ["n1", "n3"]
    assert quiet.status_code == 204
    assert sorted(row["slug"] for row in deleted.data) == ["n0", "n4"]
    assert deleted.data[0]["rank"] == 100 or deleted.data[1]["rank"] == 100
    remaining = notes.table("notes").select("slug,tag").order("slug").execute().data
    assert remaining == [
        {"slug": "n1", "tag": "edited"},
        {"slug": "n2", "tag": None},
        {"slug": "n3", "tag": "edited"},
    ]


def test_rpc_as_service_role(notes: Client) -> None:
    seed(notes, OWNER)

    assert notes.rpc("add_numbers", {"a": 2, "b": 3}).execute().data == 5
    assert notes.rpc("add_numbers", {"a": 2}).execute().data == 12  # default argument
    rows = notes.rpc("notes_with_rank_above", {"min_rank": 2}).execute().data
    assert [row["slug"] for row in rows] == ["n2", "n3"]
    filtered = notes.rpc("notes_with_rank_above", {"min_rank": 0}).eq("tag", "star").execute().data
    assert [row["slug"] for row in filtered] == ["n1", "n3"]
    assert notes.rpc("whoami", {}).execute().data == {"role": "service_role", "uid": None}
    assert notes.rpc("add_numbers", {"a": 1, "b": 1}, get=True).execute().data == 2


@pytest.mark.parametrize(
    ("call", "code", "status"),
    [
        ("duplicate", "23505", 409),
        ("foreign key", "23503", 409),
        ("unknown table", "PGRST205", 404),
        ("unknown column", "42703", 400),
        ("unknown payload column", "PGRST204", 400),
        ("unknown function", "PGRST202", 404),
        ("raise", "P0001", 400),
        ("bad uuid", "22P02", 400),
    ],
)
def test_errors_as_postgrest_reports_them(
    sandbox: Sandbox, notes: Client, call: str, code: str, status: int
) -> None:
    base = f"{sandbox.url}/rest/v1"
    headers = rest_headers(sandbox)
    requests = {
        "duplicate": lambda: [
            httpx.post(
                f"{base}/notes", headers=headers, json={"user_id": OWNER, "slug": "d", "body": "x"}
            )
            for _ in range(2)
        ][-1],
        "foreign key": lambda: httpx.post(
            f"{base}/profiles", headers=headers, json={"id": OWNER, "email": "nobody@example.com"}
        ),
        "unknown table": lambda: httpx.get(f"{base}/note", headers=headers),
        "unknown column": lambda: httpx.get(
            f"{base}/notes", headers=headers, params={"select": "nope"}
        ),
        "unknown payload column": lambda: httpx.post(
            f"{base}/notes", headers=headers, json={"nope": 1}
        ),
        "unknown function": lambda: httpx.post(
            f"{base}/rpc/add_numbrs", headers=headers, json={"a": 1}
        ),
        "raise": lambda: httpx.post(f"{base}/rpc/refuse", headers=headers, json={"reason": "no"}),
        "bad uuid": lambda: httpx.get(
            f"{base}/notes", headers=headers, params={"user_id": "eq.nope"}
        ),
    }

    response = requests[call]()

    assert response.status_code == status
    body = response.json()
    assert set(body) == {"code", "message", "details", "hint"}
    assert body["code"] == code


def test_error_details_match_postgrest(sandbox: Sandbox, notes: Client) -> None:
    with pytest.raises(APIError) as missing_table:
        notes.table("note").select("*").execute()
    with pytest.raises(APIError) as missing_function:
        notes.rpc("add_numbrs", {"a": 1}).execute()
    with pytest.raises(APIError) as raised:
        notes.rpc("refuse", {"reason": "no"}).execute()

    assert (
        missing_table.value.message == "Could not find the table 'public.note' in the schema cache"
    )
    assert missing_table.value.hint == "Perhaps you meant the table 'public.notes'"
    assert (
        missing_function.value.message
        == "Could not find the function public.add_numbrs(a) in the schema cache"
    )
    assert (
        missing_function.value.hint == "Perhaps you meant to call the function public.add_numbers"
    )
    assert raised.value.message == "refused: no"
    assert raised.value.hint == "say please"


def test_a_user_token_sees_only_its_own_rows(
    notes: Client, signed_in: Callable[[], tuple[Client, str]]
) -> None:
    alice, alice_id = signed_in()
    bob, bob_id = signed_in()
    seed(notes, alice_id)
    notes.table("notes").insert({"user_id": bob_id, "body": "bob's"}).execute()

    alice_rows = alice.table("notes").select("body,user_id").execute().data
    bob_rows = bob.table("notes").select("body").execute().data
    mine = (
        bob.table("notes").insert({"body": "written by bob"}).execute().data
    )  # user_id = auth.uid()

    assert len(alice_rows) == 5
    assert {row["user_id"] for row in alice_rows} == {alice_id}
    assert bob_rows == [{"body": "bob's"}]
    assert mine[0]["user_id"] == bob_id
    assert bob.rpc("whoami", {}).execute().data == {"role": "authenticated", "uid": bob_id}
    # Bob can neither change nor delete Alice's rows: RLS filters them out.
    assert (
        bob.table("notes").update({"body": "hacked"}).eq("user_id", alice_id).execute().data == []
    )
    assert bob.table("notes").delete().eq("user_id", alice_id).execute().data == []
    with pytest.raises(APIError) as caught:
        bob.table("notes").insert({"user_id": alice_id, "body": "forged"}).execute()
    assert caught.value.code == "42501"


def test_anon_is_refused_where_supabase_refuses_it(
    sandbox: Sandbox, anon: Client, notes: Client, signed_in: Callable[[], tuple[Client, str]]
) -> None:
    seed(notes, OWNER)
    user, _ = signed_in()

    anon_notes = anon.table("notes").select("*").execute().data  # granted, but no policy: no rows
    anon_vault = httpx.get(f"{sandbox.url}/rest/v1/vault", headers={"apikey": sandbox.anon_key})
    user_vault = httpx.get(
        f"{sandbox.url}/rest/v1/vault",
        headers={
            "apikey": sandbox.anon_key,
            "Authorization": f"Bearer {user.auth.get_session().access_token}",  # type: ignore[union-attr]
        },
    )
    no_key = httpx.get(f"{sandbox.url}/rest/v1/notes")

    assert anon_notes == []
    assert anon_vault.status_code == 401
    assert anon_vault.json()["code"] == "42501"
    assert anon_vault.headers["WWW-Authenticate"] == "Bearer"
    assert user_vault.status_code == 403
    assert no_key.status_code == 401
    with pytest.raises(APIError) as caught:
        anon.table("notes").insert({"user_id": OWNER, "body": "from anon"}).execute()
    assert caught.value.code == "42501"


def test_bad_jwt_is_401(sandbox: Sandbox) -> None:
    forged = sandbox.keys.service_role_key[:-4] + "AAAA"

    response = httpx.get(
        f"{sandbox.url}/rest/v1/notes",
        headers={"apikey": sandbox.anon_key, "Authorization": f"Bearer {forged}"},
    )

    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"


def test_requests_run_as_the_jwt_role_with_claims_set(sandbox: Sandbox) -> None:
    claims = httpx.post(
        f"{sandbox.url}/rest/v1/rpc/whoami", headers={"apikey": sandbox.anon_key}, json={}
    )

    assert claims.json() == {"role": "anon", "uid": None}


def test_migrated_schema_is_served(
    sandbox: Sandbox, service: Client, anon: Client, signed_in: Callable[[], tuple[Client, str]]
) -> None:
    """`profiles` and the enrolment RPC from crm-sync's own migrations."""
    client, user_id = signed_in()

    own = client.table("profiles").select("id,credits_remaining").execute().data
    with pytest.raises(APIError) as anon_profiles:
        anon.table("profiles").select("*").execute()
    with pytest.raises(APIError) as anon_rpc:
        anon.rpc("enrol_crm_customers", {"p_customers": [], "p_initial_credits": 4}).execute()
    enrolled = service.rpc(
        "enrol_crm_customers", {"p_customers": [], "p_initial_credits": 4}
    ).execute()

    assert own == [{"id": user_id, "credits_remaining": 0}]
    assert anon_profiles.value.code == "42501"
    assert anon_rpc.value.code == "42501"
    assert enrolled.data == []


def test_update_and_delete_without_a_filter_are_refused_as_safeupdate_does(
    sandbox: Sandbox, notes: Client
) -> None:
    """Supabase loads pg-safeupdate for PostgREST: 21000, which PostgREST answers 400."""
    seed(notes, OWNER)

    with pytest.raises(APIError) as deleting:
        notes.table("notes").delete().execute()
    with pytest.raises(APIError) as updating:
        notes.table("notes").update({"tag": "all"}).execute()
    raw = httpx.delete(f"{sandbox.url}/rest/v1/notes", headers=rest_headers(sandbox))
    filtered = notes.table("notes").delete().gte("id", 0).execute()

    assert (deleting.value.code, deleting.value.message) == (
        "21000",
        "DELETE requires a WHERE clause",
    )
    assert (updating.value.code, updating.value.message) == (
        "21000",
        "UPDATE requires a WHERE clause",
    )
    assert raw.status_code == 400
    assert raw.json() == {
        "code": "21000",
        "details": None,
        "hint": None,
        "message": "DELETE requires a WHERE clause",
    }
    assert len(filtered.data) == 5  # any filter is a WHERE clause
