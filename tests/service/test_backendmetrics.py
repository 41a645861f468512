"""
The dependencies' metrics and /readyz's cached check, in-process: how a
botocore failure is classed, and L{CachedCheck}'s one call at a time, kept
for its ttl, bounded by its timeout. (On a real server, with a real moto
and PostgreSQL: tests/e2e/test_backend_metrics.py.)
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from izreg.http.health import CachedCheck

botocore = pytest.importorskip("botocore")


def test_s3_failures_are_classed():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from izreg.service.backendmetrics import S3_OUTCOMES, s3_failure

    assert s3_failure(ConnectTimeoutError(endpoint_url="http://s3")) == "timeout"
    assert s3_failure(ReadTimeoutError(endpoint_url="http://s3")) == "timeout"
    assert s3_failure(EndpointConnectionError(endpoint_url="http://s3")) == "unreachable"
    assert s3_failure(ConnectionResetError()) == "unreachable"
    assert s3_failure(NoCredentialsError()) == "client_error"
    assert {"ok", "not_found", "client_error", "server_error", "timeout", "unreachable"} == set(S3_OUTCOMES)


class Probes:
    """The remote calls a check made (each a Deferred the test fires)."""

    def __init__(self) -> None:
        self.calls: list[Deferred] = []

    def __call__(self) -> Deferred:
        self.calls.append(Deferred())
        return self.calls[-1]


def test_one_call_at_a_time_kept_for_its_ttl():
    clock, probes = Clock(), Probes()
    check = CachedCheck("S3 bucket", probes, clock, timeout=3, ttl=5)
    first, second = check(), check()
    assert len(probes.calls) == 1  # the second waits for the same call
    probes.calls[0].callback(None)
    assert (first.result, second.result) == (None, None)
    clock.advance(4.9)
    assert check().result is None and len(probes.calls) == 1  # kept
    clock.advance(0.2)
    meanwhile = check()  # past the ttl: a second call, and the last outcome while it runs
    assert len(probes.calls) == 2 and meanwhile.result is None
    probes.calls[1].callback("cannot connect to the S3 endpoint")
    assert check().result == "cannot connect to the S3 endpoint"
    assert not clock.getDelayedCalls()  # no timeout left behind


def test_a_storm_during_a_refresh_gets_the_last_outcome_until_the_call_is_late():
    # a busy node's call waits in the I/O pool behind the storm's own probes: the storm must not
    # make it unready while the call is younger than the timeout; past that, callers wait and fail
    clock, probes = Clock(), Probes()
    check = CachedCheck("S3 bucket", probes, clock, timeout=3, ttl=5)
    first = check()
    probes.calls[0].callback(None)
    assert first.result is None
    clock.advance(5)
    storm = [check() for _ in range(40)]
    assert len(probes.calls) == 2 and all(answer.result is None for answer in storm)
    clock.advance(2.9)
    assert check().result is None and len(probes.calls) == 2
    clock.advance(0.1)
    late = check()  # the call is as old as the timeout: this caller waits for it
    assert not late.called
    clock.advance(3)
    assert late.result == "the S3 bucket did not answer within 3 s"
    assert check().result == "the S3 bucket did not answer within 3 s"  # kept for the ttl
    probes.calls[1].callback(None)
    assert check().result is None


def test_a_call_that_does_not_answer_fails_the_check_in_its_timeout_and_no_second_call_starts():
    clock, probes = Clock(), Probes()
    check = CachedCheck("S3 bucket", probes, clock, timeout=3, ttl=5)
    waiting = check()
    clock.advance(3)
    assert waiting.result == "the S3 bucket did not answer within 3 s"
    clock.advance(5)
    again = check()  # past the ttl, the call still in flight: waits for it, no second call
    assert len(probes.calls) == 1 and not again.called
    probes.calls[0].callback(None)
    assert again.result is None and check().result is None


def test_a_probe_that_raises_fails_the_check():
    clock, probes = Clock(), Probes()
    check = CachedCheck("S3 bucket", probes, clock, timeout=3, ttl=5)
    answer = check()
    probes.calls[0].errback(RuntimeError("thread pool stopped"))
    assert answer.result == "the S3 bucket check failed: thread pool stopped"


def test_readyz_at_once_shares_one_write_probe():
    from izreg.http.health import Readiness
    from izreg.storage.capacity import DiskFloor, parse_floor

    probes = Probes()
    readiness = Readiness(lambda: None, probes, DiskFloor("/", parse_floor("0")))
    first, second = ensureDeferred(readiness.refresh()), ensureDeferred(readiness.refresh())
    assert len(probes.calls) == 1  # the second waits for the probe in flight
    probes.calls[0].callback("/data is not writable: Read-only file system")
    for refresh in (first, second):
        assert refresh.result["data_dir"] == {"ok": False, "error": "/data is not writable: Read-only file system"}
    third = ensureDeferred(readiness.refresh())  # the next one, a probe of its own
    assert len(probes.calls) == 2
    probes.calls[1].errback(OSError("gone"))
    assert third.result["data_dir"] == {"ok": False, "error": "write probe failed: gone"}
    assert readiness.unwritable == "write probe failed: gone"


def test_callers_of_a_call_that_never_ends_are_not_kept():
    # a bucket HEAD that never ends (an endpoint that trickles its answer: each read within the read
    # timeout): every /readyz past the ttl waited, timed out, and stayed in the waiting list until the
    # call ended, anyone's storm of /readyz growing the process's memory the whole time
    clock, probes = Clock(), Probes()
    check = CachedCheck("S3 bucket", probes, clock, timeout=3, ttl=5)
    for _ in range(100):
        storm = [check() for _ in range(50)]
        clock.advance(4)
        assert all(answer.called for answer in storm)
    assert len(probes.calls) == 1
    assert len(check._call.waiting) <= 50  # those timed out are let go (L{Shared})
    probes.calls[0].callback(None)
    assert check().result is None


def test_readyz_at_once_shares_one_database_round_trip():
    # with PostgreSQL the index check is a ping in a database thread: a storm of /readyz (anyone's) queued
    # one each before the registry's own calls; now one at a time, like the write probe
    from twisted.internet.defer import succeed

    from izreg.http.health import Readiness
    from izreg.storage.capacity import DiskFloor, parse_floor

    pings = Probes()
    readiness = Readiness(pings, lambda: succeed(None), DiskFloor("/", parse_floor("0")))
    storm = [ensureDeferred(readiness.refresh()) for _ in range(20)]
    assert len(pings.calls) == 1
    pings.calls[0].callback("the database cannot be reached: gone")
    assert all(refresh.result["index"] == {"ok": False, "error": "the database cannot be reached: gone"}
               for refresh in storm)
    later = ensureDeferred(readiness.refresh())
    assert len(pings.calls) == 2
    pings.calls[1].callback(None)
    assert later.result["index"] == {"ok": True}
    lmdb = Readiness(lambda: None, lambda: succeed(None), DiskFloor("/", parse_floor("0")))  # no Deferred: as is
    assert ensureDeferred(lmdb.refresh()).result["index"] == {"ok": True}


def test_a_write_probe_that_never_ends_holds_no_readyz_and_leaves_the_push_gate():
    # a data directory on a hung mount: the probe's thread never returns; each /readyz waited for it
    # forever, and each was kept in the list of those waiting
    from izreg.http.health import PROBE_TIMEOUT, Readiness
    from izreg.storage.capacity import DiskFloor, parse_floor

    clock, probes = Clock(), Probes()
    readiness = Readiness(lambda: None, probes, DiskFloor("/", parse_floor("0")), reactor=clock)
    refreshes = [ensureDeferred(readiness.refresh()) for _ in range(50)]
    assert len(probes.calls) == 1
    clock.advance(PROBE_TIMEOUT)
    for refresh in refreshes:
        assert refresh.result["data_dir"] == {"ok": False, "error": "the write probe did not finish within 10 s"}
    assert readiness.unwritable is None  # pushes are not refused for a slow probe
    later = ensureDeferred(readiness.refresh())  # joins the probe still in flight, not a second one
    assert len(probes.calls) == 1
    probes.calls[0].callback(None)  # it ends at last: only the one still waiting is answered
    assert later.result["data_dir"] == {"ok": True}


def test_a_closed_push_gate_opens_by_itself_once_writable():
    # the push gate was set only by /readyz: after a full disk freed, with nothing polling /readyz (or after
    # one operator's curl in the outage), every push stayed refused until someone asked /readyz again
    from izreg.http.health import RECHECK, Readiness
    from izreg.storage.capacity import DiskFloor, parse_floor

    clock, probes = Clock(), Probes()
    readiness = Readiness(lambda: None, probes, DiskFloor("/", parse_floor("0")), reactor=clock)
    refresh = ensureDeferred(readiness.refresh())
    probes.calls[0].callback("the data directory is not writable: No space left on device")
    assert refresh.result["data_dir"]["ok"] is False
    refusals = [readiness.push_refusal() for _ in range(20)]  # a storm of pushes: one probe between them
    assert all(refusal is not None for refusal in refusals) and len(probes.calls) == 2
    probes.calls[1].callback("the data directory is not writable: No space left on device")  # still full
    clock.advance(RECHECK)  # the gate's own timer probes again
    assert len(probes.calls) == 3
    probes.calls[2].callback(None)
    assert readiness.unwritable is None and readiness.push_refusal() is None
    clock.advance(RECHECK * 10)
    assert len(probes.calls) == 3  # no probe while the gate is open
    ensureDeferred(readiness.refresh())
    probes.calls[3].callback("the data directory is not writable: Read-only file system")
    readiness.stop()
    clock.advance(RECHECK * 10)
    assert len(probes.calls) == 4 and not clock.getDelayedCalls()  # stopped: no timer left
