"""The ordered, bounded, work-sharing map the decode stage runs on."""

from __future__ import annotations

import threading
import time

import pytest

from edgedx.loadahead import ordered_map


def test_results_come_in_input_order_whatever_the_finishing_order():
    def slow_for_even(x: int) -> int:
        time.sleep(0.01 if x % 2 == 0 else 0)
        return x * x

    assert list(ordered_map(slow_for_even, range(20), workers=3, ahead=5)) == [x * x for x in range(20)]


def test_no_workers_runs_in_the_callers_thread():
    me = threading.get_ident()
    assert list(ordered_map(lambda x: threading.get_ident() == me, range(3), workers=0, ahead=2)) == [True] * 3


def test_the_consumer_runs_a_task_no_worker_has_started(monkeypatch):
    from edgedx import loadahead

    release = threading.Event()
    monkeypatch.setattr(loadahead, "_lower_priority", lambda steps: release.wait(10))  # workers starved
    ran_by: dict[int, int] = {}

    def work(x: int) -> int:
        ran_by[x] = threading.get_ident()
        if x == 3:
            release.set()
        return x

    assert list(ordered_map(work, range(4), workers=2, ahead=3)) == [0, 1, 2, 3]
    assert set(ran_by.values()) == {threading.get_ident()}  # no waiting on work nobody started


def test_an_exception_reaches_the_consumer_at_its_place():
    def work(x: int) -> int:
        if x == 2:
            raise ValueError("bad input 2")
        return x

    got = []
    with pytest.raises(ValueError, match="bad input 2"):
        for value in ordered_map(work, range(5), workers=2, ahead=2):
            got.append(value)
    assert got == [0, 1]


def test_stopping_early_starts_nothing_more():
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        time.sleep(0.005)
        return x

    results = ordered_map(work, range(1000), workers=2, ahead=4)
    assert next(results) == 0
    results.close()
    assert len(started) <= 8
