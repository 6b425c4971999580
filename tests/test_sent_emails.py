"""The recorder of accepted welcome emails: several per call, never one customer failing
another, nothing added ever left without an answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from sync_worker.errors import SupabaseError
from sync_worker.sent_emails import SentEmailRecorder
from sync_worker.store import SentEmail


def sent(*names: str) -> list[SentEmail]:
    return [SentEmail(f"{name}@example.com", "new_account") for name in names]


class Store:
    """Records calls; `refuse` maps an email to the error any call holding it raises; the
    first call waits for `release` when `hold` is set."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.refuse: dict[str, Exception] = {}
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, batch: Sequence[SentEmail]) -> list[str]:
        self.calls.append([item.email for item in batch])
        self.entered.set()
        assert self.release.wait(10)
        for item in batch:
            if item.email in self.refuse:
                raise self.refuse[item.email]
        return [item.email for item in batch]


def test_emails_accepted_while_a_record_is_in_flight_go_together_in_the_next_call() -> None:
    store = Store(hold=True)
    a, b, c = sent("a", "b", "c")
    with SentEmailRecorder(store) as recorder:
        recorder.add(a)
        assert store.entered.wait(10)
        recorder.add(b)
        recorder.add(c)
        store.release.set()
    assert store.calls == [[a.email], [b.email, c.email]]
    assert recorder.results == [(a, None), (b, None), (c, None)]


def test_a_call_records_at_most_the_batch_size() -> None:
    store = Store(hold=True)
    items = sent(*"abcdefg")
    with SentEmailRecorder(store, batch_size=3) as recorder:
        recorder.add(items[0])
        assert store.entered.wait(10)
        for item in items[1:]:
            recorder.add(item)
        store.release.set()
    assert [len(call) for call in store.calls] == [1, 3, 3]
    assert [item for item, error in recorder.results if error is None] == items


def test_a_refusal_of_one_email_fails_only_that_email() -> None:
    store = Store(hold=True)
    refusal = SupabaseError("record welcome emails: bad request", status=400, retriable=False)
    store.refuse["bad@example.com"] = refusal
    first, good, bad, other = sent("first", "good", "bad", "other")
    with SentEmailRecorder(store) as recorder:
        recorder.add(first)
        assert store.entered.wait(10)
        for item in (good, bad, other):
            recorder.add(item)
        store.release.set()
    assert recorder.results == [(first, None), (good, None), (bad, refusal), (other, None)]
    # The refused batch, then each of its emails alone.
    assert store.calls[1:] == [
        [good.email, bad.email, other.email],
        [good.email],
        [bad.email],
        [other.email],
    ]


def test_an_outage_fails_the_whole_batch_without_a_call_per_email() -> None:
    store = Store(hold=True)
    outage = SupabaseError("record welcome emails: HTTP 503", status=503, retriable=True)
    first, *rest = sent("first", "x", "y", "z")
    store.refuse["y@example.com"] = outage
    with SentEmailRecorder(store) as recorder:
        recorder.add(first)
        assert store.entered.wait(10)
        for item in rest:
            recorder.add(item)
        store.release.set()
    assert recorder.results == [(first, None)] + [(item, outage) for item in rest]
    assert len(store.calls) == 2


def test_everything_added_is_recorded_when_the_block_is_left_by_an_exception() -> None:
    store = Store()
    items = sent("a", "b")
    recorder = SentEmailRecorder(store)

    def send_then_die() -> None:
        with recorder:
            for item in items:
                recorder.add(item)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        send_then_die()
    assert recorder.results == [(item, None) for item in items]


def test_a_bug_in_the_recording_thread_reaches_the_caller() -> None:
    def broken(batch: Sequence[SentEmail]) -> None:
        raise KeyError("no such row")

    recorder = SentEmailRecorder(broken)
    recorder.add(sent("a")[0])
    with pytest.raises(KeyError, match="no such row"):
        recorder.close()


def test_a_recorder_given_nothing_makes_no_call_and_starts_no_thread() -> None:
    store = Store()
    before = threading.active_count()
    with SentEmailRecorder(store) as recorder:
        assert threading.active_count() == before
    assert store.calls == []
    assert recorder.results == []
    with pytest.raises(RuntimeError, match="closed"):
        recorder.add(sent("late")[0])


def test_emails_accepted_within_the_linger_share_one_call_and_closing_ends_it() -> None:
    store = Store()
    items = sent("a", "b", "c")
    began = time.monotonic()
    with SentEmailRecorder(store, linger=30.0) as recorder:
        for item in items:
            recorder.add(item)
    assert time.monotonic() - began < 30.0  # closing did not wait out the linger
    assert store.calls == [[item.email for item in items]]
    assert recorder.results == [(item, None) for item in items]


def test_a_lone_email_is_recorded_once_it_has_lingered() -> None:
    store = Store()
    with SentEmailRecorder(store, linger=0.01) as recorder:
        recorder.add(sent("alone")[0])
        assert store.entered.wait(10)  # recorded while the recorder is still open
    assert store.calls == [["alone@example.com"]]
