"""
The server's memory with many TLS handshakes left pending (``[tls] max_handshakes``).

    python -m bench.pending_tls [--connections 1000] [--max-handshakes 64 0] [--addresses 1]

For each cap: a fresh ``twistd izreg server`` with a TLS listener; N clients each
send a ClientHello (Python's ssl, non-blocking: one handshake step) and then
nothing. Prints the server's VmRSS before and with the N connections open.
With ``--addresses A`` the clients come from A loopback addresses in turn
(127.0.0.1, 127.0.0.2, ...: each its own group of the handshake slots).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from bench.common import REPO_ROOT, _status, closing_all, free_port


def established(port: int) -> int:
    """Connections to C{port} the kernel has established (both ends on loopback: the server's side)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"sport = :{port}"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


def raise_nofile(connections: int) -> None:
    """Enough open files for C{connections} client sockets (and the server's ends, when it is a child)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * connections + 256)), hard))


@contextmanager
def tls_server(workdir: str, config_text: str, root: str = REPO_ROOT):
    """A fresh server of C{root}'s code with a TLS listener (dev certificates): (process, TLS port, cert paths)."""
    from izreg.devcerts import write_dev_certs

    paths = write_dev_certs(os.path.join(workdir, "certs"), time.time(), "0" * 32, "gw-1")
    port, tls_port = free_port(), free_port()
    config = os.path.join(workdir, "izreg.toml")
    with open(config, "w") as f:
        f.write(config_text)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = open(os.path.join(workdir, "server.log"), "w")
    proc = subprocess.Popen([twistd, "-n", "--logfile=-", "--pidfile=", "izreg", "server", "--config", config,
                             "--data-dir", os.path.join(workdir, "data"), "--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--tls-listen", f"tcp:{tls_port}:interface=127.0.0.1", "--tls-cert", paths.server_cert,
                             "--tls-key", paths.server_key, "--device-ca", paths.ca_cert, "--init"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": root})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(1)
        yield proc, tls_port, paths
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        if proc.returncode not in (0, -15):
            print(open(os.path.join(workdir, "server.log")).read()[-3000:], file=sys.stderr)


def source(i: int) -> str:
    """The C{i}th loopback address: 127.0.0.1, ..., 127.0.0.250, 127.0.1.1, ..."""
    return f"127.0.{i // 250}.{i % 250 + 1}"


def measure(workdir: str, connections: int, cap: int, addresses: int = 1) -> tuple[int, int]:
    config = (f"[tls]\nmax_handshakes = {cap}\nhandshake_timeout = 600\nmax_waiting = {connections}\n"
              f"[connections]\nmax_connections = {connections + 100}\nmax_per_address = 0\nidle_timeout = 600\n")
    with tls_server(workdir, config) as (proc, tls_port, paths), closing_all([]) as clients:
        before = _status(proc.pid, "VmRSS")
        context = ssl.create_default_context(cafile=paths.ca_cert)
        for i in range(connections):
            sock = socket.create_connection(("127.0.0.1", tls_port), timeout=10,
                                            source_address=(source(i % addresses), 0))
            sock.setblocking(False)
            tls = context.wrap_socket(sock, server_hostname="localhost", do_handshake_on_connect=False)
            try:
                tls.do_handshake()  # the ClientHello goes out; the answer is never read
            except ssl.SSLWantReadError:
                pass
            clients.append(tls)
        deadline = time.monotonic() + 60
        while established(tls_port) < connections and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the server reads what it may
        return before, _status(proc.pid, "VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--max-handshakes", type=int, nargs="+", default=[64, 0])
    parser.add_argument("--addresses", type=int, default=1, help="client addresses, in turn (default 1)")
    args = parser.parse_args()
    raise_nofile(args.connections)
    for cap in args.max_handshakes:
        with tempfile.TemporaryDirectory(prefix="izreg-pending-tls-") as workdir:
            before, with_them = measure(workdir, args.connections, cap, args.addresses)
        print(f"max_handshakes={cap}, {args.addresses} addresses: VmRSS {before / 2**20:.1f} MiB idle, {with_them / 2**20:.1f} MiB with"
              f" {args.connections} pending handshakes: {(with_them - before) / args.connections / 1024:.1f} KiB each")


if __name__ == "__main__":
    main()
