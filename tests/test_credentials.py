"""Temporary passwords a person can read and type: no look-alikes, nothing that reads as
punctuation at either end, at least 100 bits of entropy."""

from __future__ import annotations

import math
import re

from sync_worker.provision import PASSWORD_ALPHABET, PASSWORD_SYMBOLS, new_temporary_password

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
    for _ in range(500):
        password = new_temporary_password()
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
