"""
A TCP proxy on a free loopback port in front of another server (moto), for
tests of a network that fails: C{blackhole()} makes every connection open
now or later swallow what it is sent and answer nothing, and keep those
connections dead after C{restore()} (a link that died silently: a blackhole,
an endpoint that failed over); connections made after C{restore()} pass.

Threads, one pair per connection; C{close()} ends them all.
"""

from __future__ import annotations

import socket
import threading

from tests.helpers.server import free_port


class TCPProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dropping = False
        self._only: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self, only: bytes | None = None) -> None:
        """From now on, connections go dead; with C{only}, just those that send a request starting so (C{b"DELETE "})."""
        self._only = only
        self._dropping = True

    def restore(self) -> None:
        self._dropping = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            dead = [self._dropping and self._only is None]  # a connection made in a blackhole stays dead
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, requests in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(source, sink, dead, requests), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, dead: list, requests: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self._dropping and (self._only is None or requests and data.startswith(self._only)):
                    dead[0] = True
                if not dead[0]:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()
            self._sockets = []
