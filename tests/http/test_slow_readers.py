"""Clients that stop reading a blob are closed after connections.send_timeout (izreg.http.limits.SlowReaders)."""

from __future__ import annotations

from twisted.internet.task import Clock

from izreg.http.limits import SlowReaders


class Sender:
    def __init__(self) -> None:
        self.handed = 0
        self.closed = False
        self.stalls = 0

    def stalled(self) -> None:
        self.stalls += 1

    def too_slow(self) -> None:
        self.closed = True


class Transport:
    def __init__(self) -> None:
        self.queued = 0


def watch(timeout=60, interval=5):
    clock = Clock()
    return clock, SlowReaders(clock, timeout, interval, queued=lambda transport: transport.queued)


def test_a_client_that_reads_nothing_is_closed_after_the_timeout():
    clock, readers = watch()
    sender, transport = Sender(), Transport()
    readers.started(sender, transport)
    sender.handed, transport.queued = 1_000_000, 700_000  # what the sockets took, then nothing more
    clock.advance(5)  # the first look: progress since the start
    for _ in range(11):
        clock.advance(5)
        assert not sender.closed
    clock.advance(5)  # 60 s since the last progress
    assert sender.closed
    assert sender not in readers.watched
    assert not clock.getDelayedCalls()  # nothing left to watch: no timer


def test_each_look_that_sees_nothing_read_tells_the_sender_it_stalled():
    # (the TLS layer then gives back what it need not keep: izreg.service.fasttls.FastTLSTransport.releaseBuffers)
    clock, readers = watch()
    sender, transport = Sender(), Transport()
    readers.started(sender, transport)
    sender.handed, transport.queued = 1_000_000, 700_000
    clock.advance(5)  # progress since the start
    assert sender.stalls == 0
    clock.advance(5)
    assert sender.stalls == 1
    transport.queued -= 1000  # the client read a little: not stalled
    clock.advance(5)
    assert sender.stalls == 1
    clock.advance(5)
    assert sender.stalls == 2 and not sender.closed


def test_a_slow_reader_that_makes_progress_is_never_cut():
    clock, readers = watch()
    sender, transport = Sender(), Transport()
    readers.started(sender, transport)
    sender.handed, transport.queued = 1_000_000, 700_000
    for _ in range(100):  # 500 s: the client acknowledges a little at a time
        clock.advance(5)
        transport.queued -= 1000
    assert not sender.closed
    for _ in range(50):  # and a sender handing more (the socket took it) is progress too
        clock.advance(5)
        sender.handed += 1
    assert not sender.closed


def test_done_stops_the_watch_and_zero_is_off():
    clock, readers = watch()
    sender = Sender()
    readers.started(sender, Transport())
    readers.done(sender)
    clock.advance(5)
    assert not clock.getDelayedCalls()
    clock, off = watch(timeout=0)
    off.started(sender, Transport())
    assert not off.watched and not clock.getDelayedCalls()


def test_stop_cancels_the_timer():
    clock, readers = watch()
    readers.started(Sender(), Transport())
    readers.stop()
    assert not clock.getDelayedCalls()


def test_a_sender_waiting_on_its_reader_is_not_the_clients_fault():
    """Nothing queued for the client (the blob's stream from S3 is slow): the client is not cut."""
    clock, readers = watch()
    sender, transport = Sender(), Transport()
    readers.started(sender, transport)
    sender.handed, transport.queued = 4_000_000, 0  # all it was given, read; the next read has not come
    for _ in range(40):
        clock.advance(5)
    assert not sender.closed
