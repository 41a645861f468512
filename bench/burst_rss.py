"""
The server's memory after a burst of TLS connections has closed (izreg/service/bursttrim.py).

    python -m bench.burst_rss [--connections 1000] [--root DIR]

A fresh ``twistd izreg server`` (the code of C{--root}, default this tree) with a TLS
listener; N clients connect at once (full handshakes, each a GET /v2/ kept open), then
all close. Prints the server's VmRSS idle, with the N open, and each second for 15 s
after they closed.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import tempfile
import time

from bench.common import REPO_ROOT, _status, closing_all
from bench.pending_tls import raise_nofile, tls_server


def run(workdir: str, root: str, connections: int) -> None:
    config = f"[connections]\nmax_connections = {connections + 100}\nmax_per_address = 0\n"
    with tls_server(workdir, config, root) as (proc, tls_port, paths), closing_all([]) as clients:
        idle = _status(proc.pid, "VmRSS")
        context = ssl.create_default_context(cafile=paths.ca_cert)
        context.load_cert_chain(paths.client_cert, paths.client_key)
        for _ in range(connections):
            tls = context.wrap_socket(socket.create_connection(("127.0.0.1", tls_port), timeout=60),
                                      server_hostname="localhost")
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            clients.append(tls)
        for tls in clients:
            tls.recv(4096)
        opened = _status(proc.pid, "VmRSS")
        for tls in clients:
            tls.close()
        clients.clear()
        after = []
        for _ in range(15):
            time.sleep(1)
            after.append(_status(proc.pid, "VmRSS"))
        print(f"{root}: VmRSS idle {idle / 2**20:.1f} MiB, {connections} open {opened / 2**20:.1f} MiB, after"
              f" they closed (each second): {' '.join(f'{a / 2**20:.1f}' for a in after)} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--root", default=REPO_ROOT, help="the source tree the server runs (default: this one)")
    args = parser.parse_args()
    raise_nofile(args.connections)
    with tempfile.TemporaryDirectory(prefix="izreg-burst-rss-") as workdir:
        run(workdir, os.path.abspath(args.root), args.connections)


if __name__ == "__main__":
    main()
