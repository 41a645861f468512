"""
The bounded wait for a thread (L{izreg.service.backends.bounded_runner}) on a
Clock, with a pool whose threads the test frees one call at a time; the S3
pool's refusal as the client sees it; and L{DetachedPool}'s stop, which leaves
a stuck thread behind instead of joining it (real threads). On a real server
with a bucket that does not answer: tests/e2e/test_s3_queue.py.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
from twisted.internet.task import Clock

from izreg.core.errors import ErrorCode
from izreg.service.backends import CallQueue, DetachedPool, PoolStopped, bounded_runner
from izreg.storage.failures import storage_error
from izreg.storage.interfaces import StorageBusy


class ClockReactor(Clock):
    """A Clock whose threads' results arrive at once (deferToThreadPool's callFromThread)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class Threads:
    """A thread pool whose calls run only when the test frees a thread (L{take})."""

    def __init__(self) -> None:
        self.calls: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.calls.append((on_result, f, args, kwargs))

    def take(self) -> None:
        """A thread takes the oldest call and runs it."""
        on_result, f, args, kwargs = self.calls.pop(0)
        try:
            value = f(*args, **kwargs)
        except BaseException as e:
            from twisted.python.failure import Failure

            on_result(False, Failure(e))
            return
        on_result(True, value)


def s3_busy(wait: float) -> Exception:
    from izreg.storage.s3 import busy

    return busy(wait)


def test_a_call_that_finds_no_thread_in_time_is_refused_and_never_runs():
    reactor, threads, queue, ran = ClockReactor(), Threads(), CallQueue(), []
    run = bounded_runner(reactor, threads, 10, queue, refuse=s3_busy)
    late = run(ran.append, "late")
    failures = []
    late.addErrback(failures.append)
    assert (queue.waiting, queue.running, queue.expired) == (1, 0, 0)
    reactor.advance(9.9)
    assert not failures
    reactor.advance(0.1)
    assert len(failures) == 1 and failures[0].check(StorageBusy)
    assert "no thread free for 10 s (storage.s3.queue_timeout)" in str(failures[0].value)
    assert (queue.waiting, queue.running, queue.expired) == (0, 0, 1)
    threads.take()  # a thread frees up later: the refused call is skipped, not run half-way through a 503
    assert ran == [] and (queue.waiting, queue.running, queue.expired) == (0, 0, 1)
    assert not reactor.getDelayedCalls()


class Part(bytearray):
    """A bytearray one can hold a weak reference to."""


def test_a_refused_call_lets_go_of_its_arguments_at_once():
    # An S3 upload's call holds its part (5 MiB): a refused one kept it in the pool's queue until a
    # thread was free, which a bucket that does not answer delays by read_timeout x attempts (6 min
    # by default). Six clients retrying 6 MB pushes for 30 s on a blackholed bucket: RSS 85 -> 664 MiB.
    reactor, threads, queue = ClockReactor(), Threads(), CallQueue()
    run = bounded_runner(reactor, threads, 10, queue, refuse=s3_busy)
    part = Part(1024)
    kept = weakref.ref(part)
    run(len, part).addErrback(lambda f: None)
    del part
    reactor.advance(10)
    gc.collect()
    assert kept() is None, "the refused call's argument is still referenced (by the pool's queue)"
    threads.take()  # and the thread that frees up later skips it
    assert queue.expired == 1 and queue.running == 0


def test_a_call_taken_in_time_runs_counted_as_running_and_its_timer_is_gone():
    reactor, threads, queue = ClockReactor(), Threads(), CallQueue()
    run = bounded_runner(reactor, threads, 10, queue, refuse=s3_busy)
    seen = []
    d = run(lambda: seen.append((queue.waiting, queue.running)) or "answer")
    reactor.advance(9)
    threads.take()
    assert seen == [(0, 1)] and d.result == "answer"
    assert (queue.waiting, queue.running, queue.expired) == (0, 0, 0)
    assert not reactor.getDelayedCalls()
    reactor.advance(5)  # past the wait: nothing fires twice
    failing = run(lambda: 1 / 0)
    threads.take()
    with pytest.raises(ZeroDivisionError):  # a call's own error comes through as it is
        failing.result.raiseException()
    failing.addErrback(lambda f: None)
    assert (queue.waiting, queue.running, queue.expired) == (0, 0, 0)


def test_only_the_calls_behind_busy_threads_are_refused():
    reactor, threads, queue = ClockReactor(), Threads(), CallQueue()
    run = bounded_runner(reactor, threads, 10, queue, refuse=s3_busy)
    first = run(lambda: 1)
    reactor.advance(5)
    second = run(lambda: 2)
    threads.take()  # the first gets a thread at 5 s
    reactor.advance(5)  # the second has waited 5 s: still waiting
    assert first.result == 1 and not second.called and queue.waiting == 1
    reactor.advance(5)
    assert second.called and queue.expired == 1
    second.addErrback(lambda f: None)


def test_the_client_gets_a_503_with_retry_after():
    error = storage_error(s3_busy(10))
    assert error is not None and error.code is ErrorCode.UNAVAILABLE
    assert error.headers == {"Retry-After": "1"} and error.detail == {"reason": "storage backend busy"}


def test_stop_leaves_a_stuck_thread_behind_after_its_grace():
    pool = DetachedPool(0, 2, "test-s3", grace=0.3)
    pool.start()
    release, started, quick = threading.Event(), threading.Event(), threading.Event()
    pool.callInThread(lambda: (started.set(), release.wait(60)))
    pool.callInThread(quick.set)
    assert started.wait(10) and quick.wait(10)
    began = time.monotonic()
    left = pool.stop()
    took = time.monotonic() - began
    try:
        # Twisted's ThreadPool.stop joined every thread: it waited as long as the stuck call (60 s here)
        assert 0.25 < took < 5, took
        assert len(left) == 1 and left[0].daemon and left[0].is_alive()  # the interpreter will not wait for it
    finally:
        release.set()
    left[0].join(10)
    assert not left[0].is_alive()


def test_a_call_still_waiting_for_a_thread_at_stop_fails_there_and_never_runs():
    # Twisted's team ran it once the stuck thread came free: after the reactor had stopped (attack17 F5)
    pool = DetachedPool(0, 1, "test-s3", grace=0.1)
    pool.start()
    release, started, ran, results = threading.Event(), threading.Event(), threading.Event(), []
    pool.callInThread(lambda: (started.set(), release.wait(60)))
    assert started.wait(10)
    pool.callInThreadWithCallback(lambda ok, result: results.append((ok, result)), ran.set)
    left = pool.stop()
    assert len(results) == 1 and not results[0][0] and results[0][1].check(PoolStopped), results
    pool.callInThreadWithCallback(lambda ok, result: results.append((ok, result)), ran.set)  # after stop: refused
    assert len(results) == 2 and results[1][1].check(PoolStopped)
    release.set()
    left[0].join(10)
    assert not left[0].is_alive() and not ran.is_set() and len(results) == 2


def one_thread_held():
    """A DetachedPool of one thread, held by a call until C{release} is set, and its bounded_runner (wait 10)."""
    reactor, queue = ClockReactor(), CallQueue()
    pool = DetachedPool(0, 1, "test-s3", grace=0.1)
    pool.start()
    release, started = threading.Event(), threading.Event()
    run = bounded_runner(reactor, pool, 10, queue, refuse=s3_busy)
    run(lambda: (started.set(), release.wait(60))).addErrback(lambda f: None)
    assert started.wait(10)
    return reactor, queue, pool, run, release


def test_a_call_refused_for_its_wait_and_then_failed_at_stop_is_answered_once():
    # a bucket that does not answer: calls refused after queue_timeout stay in the pool's queue; at stop
    # the pool failed each of them again (PoolStopped), and each second answer was an AlreadyCalledError
    # traceback ("Unhandled error in Deferred") in the log of a node stopping after an outage
    from twisted.logger import globalLogPublisher

    logged = []

    def observer(event):
        if event.get("log_failure") is not None:
            logged.append(event["log_failure"])

    reactor, queue, pool, run, release = one_thread_held()
    refused = []
    run(len, b"never").addErrback(refused.append)
    reactor.advance(10)
    assert len(refused) == 1 and refused[0].check(StorageBusy)
    globalLogPublisher.addObserver(observer)
    try:
        left = pool.stop()
        release.set()
        for thread in left:
            thread.join(10)
        gc.collect()  # an unhandled error in a Deferred is logged when the Deferred goes
    finally:
        globalLogPublisher.removeObserver(observer)
        release.set()
    assert logged == [], [f.getTraceback() for f in logged]
    assert len(refused) == 1


def test_stop_returns_at_once_when_no_call_is_in_flight():
    pool = DetachedPool(0, 2, "test-s3", grace=30)
    pool.start()
    ran = threading.Event()
    pool.callInThread(ran.set)
    assert ran.wait(10)
    began = time.monotonic()
    assert pool.stop() == []
    assert time.monotonic() - began < 5


def test_a_call_failed_at_stop_while_waiting_leaves_the_waiting_count():
    # failed by the pool's stop (PoolStopped) before a thread or the timer took it: izreg_s3_queue_waiting
    # stayed one too high for each such call
    reactor, queue, pool, run, release = one_thread_held()
    failed = []
    run(len, b"never").addErrback(failed.append)
    assert queue.waiting == 1
    try:
        left = pool.stop()
    finally:
        release.set()
    for thread in left:
        thread.join(10)
    assert len(failed) == 1 and failed[0].check(PoolStopped)
    assert queue.waiting == 0 and queue.expired == 0 and not reactor.getDelayedCalls()
