# -*- test-case-name: tests.http.test_chunked -*-
"""
The chunked request-body decoder, without copying the chunks' bytes.

Twisted's L{_ChunkedTransferDecoder} appends every received block to a
buffer, copies each chunk out of it and deletes it from the front (moving
the rest): for a docker push (32 KiB chunks in 64 KiB reads) that is several
copies of every byte on the reactor. L{ChunkedDecoder} hands the chunk data
to the request straight from the received block (the block itself when it
is all chunk data, else one slice), reads the usual framing itself (the
CRLF after a chunk, a size line without extension, whole in one read), and
feeds Twisted's own states the rest between chunks (a size line split
across reads or with an extension, the last chunk, the trailer and what
follows it) a piece at a time. Same bytes, same order, same checks: the
errors are Twisted's (tests.http.test_chunked compares the two decoders).
"""

from __future__ import annotations

from twisted.web._abnf import _hexint
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError, maxChunkSizeLineLength


class ChunkedDecoder(_ChunkedTransferDecoder):
    def dataReceived(self, data: bytes) -> None:
        pos, end = 0, len(data)
        view = None
        while pos < end:
            state = self.state
            if state == "BODY" and not self._buffer:
                take = min(self.length, end - pos)
                if take == end:
                    chunk = data
                else:
                    if view is None:
                        view = memoryview(data)
                    chunk = view[pos:pos + take]
                pos += take
                self.length -= take
                if not self.length:
                    self.state = "CRLF"
                self.dataCallback(chunk)
            elif state == "CRLF":
                if not self._buffer and data.startswith(b"\r\n", pos):
                    pos += 2
                    self.state = "CHUNK_LENGTH"
                    continue
                stop = min(end, pos + 2 - len(self._buffer))
                super().dataReceived(data[pos:stop])
                pos = stop
            elif state == "CHUNK_LENGTH":
                if not self._buffer:
                    # the usual size line, whole in this read: no extension, not the last chunk
                    eol = data.find(b"\r\n", pos, pos + maxChunkSizeLineLength)
                    if eol != -1:
                        line = data[pos:eol]
                        if b";" not in line:
                            try:
                                length = _hexint(line)
                            except ValueError:
                                raise _MalformedChunkedDataError("Chunk-size must be an integer.") from None
                            if length:
                                self.length, self.state, pos = length, "BODY", eol + 2
                                continue
                eol = data.find(b"\n", pos)
                stop = end if eol == -1 else eol + 1  # the size line up to its LF (or all there is)
                super().dataReceived(data[pos:stop])
                pos = stop
            else:  # the trailer (and what follows the body), or data after the end: Twisted's way
                super().dataReceived(data[pos:] if pos else data)
                return
