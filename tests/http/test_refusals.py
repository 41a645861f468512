"""L{RefusalLog}: refused certificates at an attacker's rate become a few lines and a count."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs

from izreg.http.refusals import MAX_REASONS, RefusalLog


def lines(events) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def refuse(log: RefusalLog, reason: str, n: int) -> None:
    for i in range(n):
        log.warn("refused certificate {subject} from {peer}: {reason}", subject=f"CN=x{i}", peer="10.0.0.1",
                 reason=reason)


def test_a_flood_is_five_lines_then_one_summary_when_the_minute_ends():
    clock = Clock()
    log = RefusalLog(Logger(), "TLS client certificates", burst=5, window=60, clock=clock)
    with capturedLogs() as events:
        refuse(log, "expired", 1000)
        clock.advance(30)
        refuse(log, "expired", 10)
    assert lines(events) == [f"refused certificate CN=x{i} from 10.0.0.1: expired" for i in range(5)]
    assert log.total == 1010
    with capturedLogs() as events:
        clock.advance(30)  # the window ends: its summary, with no refusal to carry it
    assert lines(events) == ["1005 more refused TLS client certificates (expired) in the last 60 s"]
    assert events[0]["log_level"].name == "warn"
    with capturedLogs() as events:
        refuse(log, "expired", 2)  # a new window: in full again
        clock.advance(120)
    assert lines(events) == [f"refused certificate CN=x{i} from 10.0.0.1: expired" for i in range(2)]
    assert not clock.getDelayedCalls()


def test_each_reason_has_its_own_burst():
    clock = Clock()
    log = RefusalLog(Logger(), "device certificates", burst=2, window=60, clock=clock)
    with capturedLogs() as events:
        refuse(log, "revoked-serial", 3)
        refuse(log, "unknown-ca", 4)
        clock.advance(60)
    assert lines(events) == [
        "refused certificate CN=x0 from 10.0.0.1: revoked-serial",
        "refused certificate CN=x1 from 10.0.0.1: revoked-serial",
        "refused certificate CN=x0 from 10.0.0.1: unknown-ca",
        "refused certificate CN=x1 from 10.0.0.1: unknown-ca",
        "1 more refused device certificates (revoked-serial) in the last 60 s",
        "2 more refused device certificates (unknown-ca) in the last 60 s",
    ]
    assert log.total == 7


def test_reasons_past_the_cap_share_one_window():
    clock = Clock()
    log = RefusalLog(Logger(), "TLS client certificates", burst=1, window=60, clock=clock)
    with capturedLogs() as events:
        for i in range(MAX_REASONS + 100):
            refuse(log, f"X509 verify error {i}", 1)
    assert len(events) == MAX_REASONS + 1  # the 64 reasons, then one line for all the others
    assert log.total == MAX_REASONS + 100
    log.reset()
    assert not clock.getDelayedCalls()
    with capturedLogs() as events:
        refuse(log, "X509 verify error 1", 1)
    assert len(events) == 1
