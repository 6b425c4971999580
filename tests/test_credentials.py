"""Temporary passwords a person can read and type: no look-alikes, nothing that reads as
punctuation at either end, at least 100 bits of entropy; derived from a key, the email and the
account's credential version, so every email that carries one carries the same."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from sync_worker.provision import PASSWORD_ALPHABET, PASSWORD_SYMBOLS, temporary_password

LOOK_ALIKES = set("0O1lI")


def test_the_alphabet_has_no_look_alikes_and_enough_entropy() -> None:
    assert not LOOK_ALIKES & set(PASSWORD_ALPHABET)
    assert all(c.isascii() and c.isalnum() for c in PASSWORD_ALPHABET)
    assert len(set(PASSWORD_ALPHABET)) == len(PASSWORD_ALPHABET)
    assert PASSWORD_SYMBOLS * math.log2(len(PASSWORD_ALPHABET)) >= 100


def test_passwords_are_groups_of_the_alphabet_joined_by_hyphens() -> None:
    group = f"[{re.escape(PASSWORD_ALPHABET)}]"
    shape = re.compile(rf"^{group}+(-{group}+)*$")
    seen = set()
    for n in range(500):
        password = temporary_password(b"a key", f"customer{n}@example.com")
        assert shape.match(password), password
        assert password[0].isalnum()
        assert password[-1].isalnum()
        assert len(password.replace("-", "")) == PASSWORD_SYMBOLS
        assert len(password.encode()) <= 72  # bcrypt's limit; Auth refuses longer
        assert any(c.islower() for c in password)
        assert any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password)
        seen.add(password)
    assert len(seen) == 500


def test_the_same_customer_gets_the_same_password_and_nobody_else_does() -> None:
    """A re-sent email carries the password of the one it may duplicate."""
    key = b"k" * 32
    first = temporary_password(key, "Ann@Example.com ")
    assert temporary_password(key, "ann@example.com") == first
    assert temporary_password(key, "ann@example.com", "") == first
    # An account created again for the email keeps another nonce, so another password.
    assert temporary_password(key, "ann@example.com", "a1b2") != first
    assert temporary_password(key, "bob@example.com") != first
    assert temporary_password(b"another key", "ann@example.com") != first
    with pytest.raises(ValueError, match="CREDENTIALS_SECRET"):
        temporary_password(b"", "ann@example.com")


def test_derived_symbols_are_drawn_without_bias() -> None:
    counts = Counter(
        c for n in range(3000) for c in temporary_password(b"bias", f"c{n}@x.co").replace("-", "")
    )
    expected = 3000 * PASSWORD_SYMBOLS / len(PASSWORD_ALPHABET)
    assert set(counts) == set(PASSWORD_ALPHABET)
    assert all(abs(n - expected) < expected * 0.15 for n in counts.values()), counts
