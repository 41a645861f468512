"""The size of one sendfile(2) call of a blob GET on plain TCP (izreg.http.responses.call_size)."""

from __future__ import annotations

import socket

import pytest

from izreg.http.responses import SENDFILE_SIZE, call_size


class Segments:
    """A socket whose TCP_MAXSEG is C{mss}."""

    def __init__(self, mss: int) -> None:
        self.mss = mss

    def getsockopt(self, level, option):
        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        return self.mss


@pytest.mark.parametrize(
    "mss, size",
    [
        (65483, 65483),  # loopback: one segment a call
        (32768, 65536),  # a fresh loopback connection: two
        (1448, 45 * 1448),  # Ethernet with timestamps: whole segments, under 64 KiB
        (8948, 7 * 8948),  # jumbo frames
        (100000, 100000),  # an MSS above the cap: still one whole segment
        (0, SENDFILE_SIZE),
    ],
)
def test_whole_segments_up_to_64_KiB(mss, size):
    assert call_size(Segments(mss)) == size


def test_real_sockets():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client, listener.accept()[0] as server:
            mss = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            assert call_size(server) % mss == 0 and mss <= call_size(server) <= max(mss, SENDFILE_SIZE)
    left, right = socket.socketpair()  # not TCP: the cap
    with left, right:
        assert call_size(left) == SENDFILE_SIZE
