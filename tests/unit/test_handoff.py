"""The handoff stage: items cross to a producer thread and back in order, errors and all.

`handed_off` runs each export's reading and serializing ahead of compression and upload; these
tests pin what the composition relies on: order, errors raised where the consumer is, a bounded
queue, and nothing left running (thread or source) once the consumer closes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pipelines.export import HANDOFF_POLL_SECONDS, handed_off

# Long enough for a producer that could run further ahead to do so: two of its poll intervals.
SETTLE_SECONDS = 2 * HANDOFF_POLL_SECONDS
# Upper limit when waiting for the producer to reach a state it must reach.
WAIT_LIMIT_SECONDS = 10.0


class CountingSource:
    """A source that counts what it has produced and records how and where it ended."""

    def __init__(self, limit: int | None = None, fail_after: int | None = None) -> None:
        self.limit = limit
        self.fail_after = fail_after
        self.produced = 0
        self.closed = False
        self.finished = False
        self.producer: threading.Thread | None = None
        self.ended_on: threading.Thread | None = None
        self.error = RuntimeError("the source broke")

    def __iter__(self) -> Iterator[int]:
        self.producer = threading.current_thread()
        try:
            while self.limit is None or self.produced < self.limit:
                if self.fail_after is not None and self.produced == self.fail_after:
                    raise self.error
                self.produced += 1
                yield self.produced - 1
            self.finished = True
        except GeneratorExit:
            self.closed = True
            raise
        finally:
            self.ended_on = threading.current_thread()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_items_arrive_complete_and_in_order() -> None:
    assert list(handed_off(range(10_000), depth=3)) == list(range(10_000))


def test_an_empty_source_ends_the_stream_and_the_thread() -> None:
    source = CountingSource(limit=0)
    assert list(handed_off(iter(source), depth=2)) == []
    assert source.finished
    assert source.producer is not None
    assert source.producer not in threading.enumerate()


def test_a_source_error_is_raised_on_the_consumer_side_after_the_items_before_it() -> None:
    source = CountingSource(fail_after=5)
    stream = handed_off(iter(source), depth=2)
    received = [next(stream) for _ in range(5)]
    with pytest.raises(RuntimeError) as caught:
        next(stream)
    assert caught.value is source.error
    assert received == [0, 1, 2, 3, 4]
    assert source.producer is not None
    assert source.producer is not threading.current_thread()
    assert source.producer not in threading.enumerate()


def test_an_error_before_the_first_item_reaches_the_consumer() -> None:
    source = CountingSource(fail_after=0)
    stream = handed_off(iter(source))
    with pytest.raises(RuntimeError, match="the source broke"):
        next(stream)
    assert source.producer not in threading.enumerate()


def test_closing_early_stops_and_joins_the_producer_and_closes_the_source() -> None:
    source = CountingSource()  # endless: only closing can stop it
    stream = handed_off(iter(source), depth=2)
    assert [next(stream), next(stream)] == [0, 1]
    producer = source.producer
    assert producer is not None
    assert producer.is_alive()
    wait_until(lambda: source.produced >= 5, "the producer to fill the queue")
    stream.close()
    assert not producer.is_alive()
    assert producer not in threading.enumerate()
    assert source.closed
    # Closed on the producer's own thread, which is the only thread that may touch it.
    assert source.ended_on is producer


def test_closing_while_the_producer_waits_on_a_full_queue_returns_promptly() -> None:
    source = CountingSource()
    stream = handed_off(iter(source), depth=1)
    next(stream)
    wait_until(lambda: source.produced == 3, "the producer to block on the full queue")
    started = time.monotonic()
    stream.close()
    # It notices within one poll interval; the generous limit only guards against a hang.
    assert time.monotonic() - started < WAIT_LIMIT_SECONDS
    assert source.producer not in threading.enumerate()


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_producer_never_runs_more_than_depth_items_ahead(depth: int) -> None:
    source = CountingSource(limit=40)
    stream = handed_off(iter(source), depth=depth)
    for consumed in range(1, 4):
        assert next(stream) == consumed - 1
        # The queue holds `depth` items and the producer one more, waiting to put it.
        ahead = consumed + depth + 1
        wait_until(lambda: source.produced == ahead, "the producer to run ahead")  # noqa: B023
        time.sleep(SETTLE_SECONDS)
        assert source.produced == ahead
    assert list(stream) == list(range(3, 40))
    assert source.finished


def test_the_producer_runs_on_its_own_named_daemon_thread() -> None:
    source = CountingSource(limit=3)
    assert list(handed_off(iter(source))) == [0, 1, 2]
    producer = source.producer
    assert producer is not None
    assert producer is not threading.current_thread()
    assert producer.daemon
    assert producer.name == "export-stage"
