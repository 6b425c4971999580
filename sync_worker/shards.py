"""Which worker serves which customer: a stable hash of the normalised email (the same in
SQL, `crm_sync_shard`, and here), and how a shard is written beside what it reports."""

from __future__ import annotations

import hashlib

# (index, count): a worker's share of the customers; (0, 1) is everyone.
Shard = tuple[int, int]


def shard_label(shard: Shard) -> str:
    """A shard as stored beside what it reports ("index/count"; "0/1" unsharded)."""
    return f"{shard[0]}/{shard[1]}"


def parse_shard_label(label: str) -> Shard:
    index, _, count = label.partition("/")
    return int(index), int(count or 1)


def shard_of(email: str, shard_count: int) -> int:
    """The shard of a normalised email: the first 32 bits of its MD5 modulo the count (the
    database's `crm_sync_shard` computes the same)."""
    if shard_count <= 1:
        return 0
    digest = hashlib.md5(email.encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % shard_count
