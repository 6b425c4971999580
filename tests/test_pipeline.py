"""The bounded stages a cycle's new customers go through: no database, no network."""

from __future__ import annotations

import contextvars
import threading

import pytest

from sync_worker.pipeline import HandOff, batches, map_bounded

REQUEST = contextvars.ContextVar("REQUEST", default="none")


def test_every_item_is_mapped_once_and_each_result_comes_as_it_is_ready() -> None:
    release = threading.Event()

    def work(item: int) -> int:
        if item == 0:
            release.wait(5)  # the first item is slow: the others do not wait for it
        return item * 10

    results = []
    for result in map_bounded(work, range(6), workers=3, ahead=6):
        results.append(result)
        if len(results) == 5:
            release.set()
    assert sorted(results) == [0, 10, 20, 30, 40, 50]
    assert results[-1] == 0


def test_at_most_ahead_items_are_in_flight_whatever_the_number_of_items() -> None:
    lock = threading.Lock()
    submitted = 0
    taken = 0
    most = 0

    def work(item: int) -> int:
        nonlocal submitted, most
        with lock:
            submitted += 1
            most = max(most, submitted - taken)
        return item

    for _ in map_bounded(work, range(1000), workers=4, ahead=8):
        with lock:
            taken += 1
    assert taken == 1000
    assert most <= 8


def test_nothing_new_is_submitted_once_halted_and_what_is_in_flight_still_comes() -> None:
    started: list[int] = []
    halted = threading.Event()

    def work(item: int) -> int:
        started.append(item)
        return item

    results = []
    for result in map_bounded(work, range(100), workers=2, ahead=4, halted=halted.is_set):
        results.append(result)
        halted.set()
    assert len(started) <= 4
    assert sorted(results) == sorted(started)


def test_each_task_runs_in_a_copy_of_the_callers_context() -> None:
    REQUEST.set("run-7")
    assert set(map_bounded(lambda _: REQUEST.get(), range(10), workers=3, ahead=6)) == {"run-7"}


def test_batches_leave_out_the_nones_and_keep_the_rest_in_order() -> None:
    assert list(batches([1, None, 2, 3, None, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(batches([None, None], 3)) == []


def test_a_hand_off_consumes_in_order_and_holds_the_producer_back() -> None:
    consumed: list[int] = []
    gate = threading.Event()
    put_returned: list[int] = []

    def consume(batch: int) -> None:
        gate.wait(5)
        consumed.append(batch)

    def produce(handoff: HandOff[int]) -> None:
        for batch in range(5):
            handoff.put(batch)
            put_returned.append(batch)

    with HandOff(consume, ahead=2) as handoff:
        producer = threading.Thread(target=produce, args=(handoff,))
        producer.start()
        producer.join(0.3)
        # Two batches wait (one of them in the consumer): the third put blocks.
        assert put_returned == [0, 1]
        gate.set()
        producer.join(5)
    assert consumed == [0, 1, 2, 3, 4]


def test_a_failed_batch_is_raised_when_the_hand_off_closes() -> None:
    def consume(batch: int) -> None:
        if batch == 1:
            raise RuntimeError("batch 1 failed")

    def run() -> None:
        with HandOff(consume, ahead=4) as handoff:
            for batch in range(3):
                handoff.put(batch)

    with pytest.raises(RuntimeError, match="batch 1"):
        run()


def test_an_error_of_the_producer_is_not_masked_by_one_of_a_batch() -> None:
    def consume(batch: int) -> None:
        raise RuntimeError("consumer")

    def run() -> None:
        with HandOff(consume, ahead=4) as handoff:
            handoff.put(1)
            raise KeyError("producer")

    with pytest.raises(KeyError):
        run()


def test_a_batch_runs_in_a_copy_of_the_producers_context() -> None:
    seen: list[str] = []
    REQUEST.set("run-9")
    with HandOff(lambda batch: seen.append(REQUEST.get()), ahead=1) as handoff:
        handoff.put(0)
        handoff.put(1)
    assert seen == ["run-9", "run-9"]
