"""
izreg.http.chunked.ChunkedDecoder against Twisted's own decoder: the same
body, the same bytes after the end, the same errors, however the stream is
split into reads.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _MalformedChunkedDataError

from izreg.http.chunked import ChunkedDecoder


def _run(cls, pieces: list[bytes]):
    """
    Feed C{pieces} to a decoder of C{cls} as the channel does (what follows
    the end goes back to the channel): (the data as delivered, the bytes after
    the end, the error).
    """
    got, rest = [], []
    decoder = cls(got.append, rest.append)
    try:
        for i, piece in enumerate(pieces):
            decoder.dataReceived(piece)
            if decoder.state == "FINISHED":
                rest += pieces[i + 1:]
                break
        decoder.noMoreData()
    except (_MalformedChunkedDataError, _DataLoss, RuntimeError) as e:
        return b"".join(got), rest, type(e)
    return b"".join(got), rest, None


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _encode(chunks: list[bytes], ext: bool, trailers: list[bytes], after: bytes) -> bytes:
    out = b""
    for chunk in chunks:
        out += b"%x%s\r\n%s\r\n" % (len(chunk), b";a=b" if ext else b"", chunk)
    out += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n" + after
    return out


chunk_data = st.binary(min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(chunk_data, max_size=8), ext=st.booleans(),
       trailers=st.lists(st.sampled_from([b"X-A: 1", b"Digest: sha-256=x"]), max_size=2),
       after=st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n"]),
       cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_well_formed_streams_decode_alike(chunks, ext, trailers, after, cuts):
    stream = _encode(chunks, ext, trailers, after)
    pieces = _split(stream, cuts)
    ours = _run(ChunkedDecoder, pieces)
    assert ours == _run(_ChunkedTransferDecoder, pieces)
    assert ours[0] == b"".join(chunks) and ours[2] is None
    assert b"".join(ours[1]) == after


@settings(max_examples=300, deadline=None)
@given(stream=st.one_of(
    st.binary(max_size=200),
    # near-valid: a valid stream with one byte changed, or cut short
    st.tuples(st.lists(chunk_data, min_size=1, max_size=4), st.integers(0, 2000), st.binary(min_size=1, max_size=1),
              st.booleans()).map(lambda t: (lambda s: s[:t[1] % len(s)] if t[3] else
                                            s[:t[1] % len(s)] + t[2] + s[t[1] % len(s) + 1:])(_encode(t[0], False, [], b""))),
    st.just(b"1" * 2000 + b"\r\n"), st.just(b"4\r\nabcdXY0\r\n\r\n"), st.just(b"4;\x01\r\nabcd\r\n0\r\n\r\n"),
    st.just(b"4\nabcd\r\n0\r\n\r\n"), st.just(b"zz\r\n")),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10))
def test_any_stream_gives_the_same_result_and_error(stream, cuts):
    pieces = _split(stream, cuts)
    assert _run(ChunkedDecoder, pieces) == _run(_ChunkedTransferDecoder, pieces)


def test_a_read_of_chunk_data_alone_is_passed_on_without_a_copy():
    got = []
    decoder = ChunkedDecoder(got.append, lambda rest: None)
    decoder.dataReceived(b"8\r\n")
    block = b"abcdefgh"
    decoder.dataReceived(block)
    assert got[0] is block
