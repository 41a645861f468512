"""
What a TLS client that asks for a blob and then reads nothing costs the server.

    python -m bench.stalled_tls [--connections 150] [--size-mib 64] [--tracemalloc] [--idle] [--cut]

A fresh ``twistd izreg server`` (this tree) with a TLS listener and the development
device CA (``izreg dev-certs``); a blob of ``--size-mib`` is pushed on the plain
listener; then N clients with the device certificate each send a GET of it over TLS
and read nothing (``--idle``: a ``GET /v2/`` whose answer they read, then nothing:
idle keep-alive connections). Once the server has stopped handing bytes on (its
transports' buffers stable for 2 s), prints the server's VmRSS idle and with the N
connections and, from inside the server (a probe loaded through ``sitecustomize``,
asked with SIGUSR2, answered on the reactor's thread):

- the TCP transports' unsent bytes (``dataBuffer`` past ``offset`` and
  ``_tempDataBuffer``), OpenSSL's memory BIOs (``BIO_get_mem_data``: sealed records
  not yet taken out, received records not yet read), Twisted's TLS write buffer
  (``_appSendBuffer``), and the kernel's send queue (``SIOCOUTQ``, not RSS);
- glibc's heap (``mallinfo2``: in use, free but kept, mmapped), and the RSS after a
  ``malloc_trim(0)`` (a diagnostic; the server trims after bursts itself);
- with ``--tracemalloc``, the Python allocations by line (the server runs with
  ``PYTHONTRACEMALLOC``: slower, and traced memory is itself RSS);
- with ``--cut``, the VmRSS once the clients have closed and the server has let
  every connection go, ``--settle`` seconds later (the server trims its heap
  itself after a burst of 100 connections or more: L{izreg.service.bursttrim}),
  then after a ``malloc_trim(0)``.

The baseline is taken once the server has closed the one warm-up connection
(the first request's one-time allocations), so it holds no connection.

``--env NAME=VALUE`` passes more environment to the server (e.g. ``MALLOC_ARENA_MAX=1``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import time

from bench.common import REPO_ROOT, _status, closing_all
from bench.pending_tls import raise_nofile

sys.path.insert(0, REPO_ROOT)

from tests.helpers.ociclient import OCIClient, expect  # noqa: E402  (pushes the blob on the plain listener)
from tests.helpers.server import RegistryProcess  # noqa: E402  (twistd izreg on free ports, the bootstrap key)
from tests.helpers.tls import restart_with_tls  # noqa: E402  (dev certificates, the TLS listener)

#: the probe the server imports at start (sitecustomize): on SIGUSR2 it writes what it finds to $IZREG_PROBE_OUT
PROBE = r'''
import os, signal

def _probe():
    import ctypes, fcntl, gc, json, struct, termios, tracemalloc
    from twisted.internet import reactor

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def dump():
        from OpenSSL._util import ffi, lib
        from izreg.service.fasttls import FastTLSTransport
        out = {"conns": 0, "transport": 0, "bio_out": 0, "bio_in": 0, "app_send": 0, "outq": 0,
               "producer_paused": 0, "sender_paused": 0, "handed": 0}
        ptr = ffi.new("char **")
        for obj in gc.get_objects():
            if not isinstance(obj, FastTLSTransport) or obj._tlsConnection is None or not obj.connected:
                continue
            tcp = obj.transport
            out["conns"] += 1
            out["transport"] += len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
            out["bio_out"] += lib.BIO_get_mem_data(obj._tlsConnection._from_ssl, ptr)
            out["bio_in"] += lib.BIO_get_mem_data(obj._tlsConnection._into_ssl, ptr)
            out["app_send"] += sum(len(b) for b in obj._appSendBuffer)
            out["outq"] += struct.unpack("i", fcntl.ioctl(tcp.socket.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            out["producer_paused"] += bool(tcp.producerPaused)
        from izreg.http.responses import FileSender
        for obj in gc.get_objects():
            if isinstance(obj, FileSender) and obj.request is not None:
                out["senders"] = out.get("senders", 0) + 1
                out["sender_paused"] += bool(obj.paused)
                out["handed"] += obj.handed
        m = libc.mallinfo2()
        out["malloc"] = {"arena": m.arena, "in_use": m.uordblks, "free": m.fordblks, "mmapped": m.hblkhd}
        out["rss"], out["anon"] = status("VmRSS"), status("RssAnon")
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            out["traced"] = tracemalloc.get_traced_memory()[0]
            out["top"] = [(str(s.traceback), s.size, s.count) for s in snap.statistics("lineno")[:25]]
        if os.path.exists(os.path.join(os.path.dirname(os.environ["IZREG_PROBE_OUT"]), "trim")):
            import time
            started = time.perf_counter()
            libc.malloc_trim(0)
            out["trim_ms"] = (time.perf_counter() - started) * 1000
            out["rss_trimmed"], out["anon_trimmed"] = status("VmRSS"), status("RssAnon")
        path = os.environ["IZREG_PROBE_OUT"]
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(dump))

if os.environ.get("IZREG_PROBE_OUT"):
    _probe()
'''


def ask(proc_pid: int, out: str) -> dict:
    """The probe's answer (SIGUSR2; it writes C{out} on the reactor's thread)."""
    if os.path.exists(out):
        os.unlink(out)
    os.kill(proc_pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not os.path.exists(out):
        if time.monotonic() > deadline:
            raise TimeoutError("the server's probe did not answer")
        time.sleep(0.05)
    with open(out) as f:
        return json.load(f)


def settled(proc_pid: int, out: str, conns: int) -> dict:
    """The probe's answer once the server holds C{conns} TLS connections (a closed one goes a reactor turn later)."""
    deadline = time.monotonic() + 30
    while True:
        now = ask(proc_pid, out)
        if now["conns"] == conns:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server holds {now['conns']} TLS connections, not {conns}")
        time.sleep(0.1)


def run(workdir: str, connections: int, size: int, idle: bool, tracemalloc: bool, env: dict, settle: float,
        cut: bool = False) -> None:
    probe_dir = os.path.join(workdir, "probe")
    os.makedirs(probe_dir)
    with open(os.path.join(probe_dir, "sitecustomize.py"), "w") as f:
        f.write(PROBE)
    out = os.path.join(workdir, "probe.json")
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["PYTHONPATH"] = probe_dir
    os.environ["IZREG_PROBE_OUT"] = out
    if tracemalloc:
        os.environ["PYTHONTRACEMALLOC"] = "1"
    config = os.path.join(workdir, "izreg.toml")
    with open(config, "w") as f:
        f.write(f"[connections]\nmax_connections = {connections + 100}\nmax_per_address = 0\n"
                "send_timeout = 3600\nidle_timeout = 3600\n")
    log = os.path.join(workdir, "server.log")
    registry = RegistryProcess(data_dir=os.path.join(workdir, "data"), config=config, log_path=log)
    try:
        registry.start()
        tls_port, paths = restart_with_tls(registry, os.path.join(workdir, "certs"))
        pid = registry.pid
        data = os.urandom(size)
        repo = f"{registry.account}/stalled/tls"
        expect(OCIClient(registry.url, auth=registry.requests_auth).push_blob_monolithic(repo, data), 201)
        path = f"/v2/{repo}/blobs/sha256:{hashlib.sha256(data).hexdigest()}"
        del data
        context = ssl.create_default_context(cafile=paths.ca_cert)
        context.load_cert_chain(paths.client_cert, paths.client_key)
        # one connection first, so that what the first request of all allocates once is in the baseline
        with context.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)), server_hostname="localhost") as warm:
            warm.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while warm.recv(65536):
                pass
        before = settled(pid, out, 0)  # (the warm-up connection closed in the server too)
        with closing_all([]) as clients:
            for _ in range(connections):
                tls = context.wrap_socket(socket.create_connection(("127.0.0.1", tls_port), timeout=60),
                                          server_hostname="localhost")
                if idle:
                    tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    tls.recv(4096)
                else:
                    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                clients.append(tls)
            last, stable_since = None, time.monotonic()
            while time.monotonic() - stable_since < 2:
                time.sleep(0.5)
                now = ask(pid, out)
                key = (now["conns"], now["transport"], now["outq"], now["handed"])
                if key != last:
                    last, stable_since = key, time.monotonic()
            time.sleep(settle)  # two looks of the server's slow-reader watch (every 5 s): it has seen them stall
            now = ask(pid, out)
            report(connections, before, now, idle)
            if cut:
                for tls in clients:
                    tls.close()
                clients.clear()
                closed = settled(pid, out, 0)
                cut_report("the clients closed, none left in the server", connections, before, closed)
                time.sleep(settle)  # the server's burst trim looks every 5 s
                cut_report(f"{settle:g} s later", connections, before, ask(pid, out))
                with open(log) as f:
                    for line in f:
                        if "malloc_trim" in line:
                            print("  the server:", line.split("] ", 1)[-1].strip())
            trim = os.path.join(workdir, "trim")
            with open(trim, "w"):
                pass
            trimmed = ask(pid, out)
            os.unlink(trim)
            print(f"  after malloc_trim(0) in the server: VmRSS {trimmed['rss_trimmed'] / 2**20:.1f} MiB"
                  f" ({(trimmed['rss_trimmed'] - before['rss']) / connections / 1024:.1f} KiB per connection;"
                  f" the trim took {trimmed['trim_ms']:.2f} ms)")
    finally:
        registry.close()
        os.environ.clear()
        os.environ.update(saved)


def report(n: int, before: dict, now: dict, idle: bool) -> None:
    what = "idle keep-alive" if idle else "stalled blob GET"
    kib = lambda v: f"{v / n / 1024:.1f} KiB"  # noqa: E731
    print(f"{n} {what} TLS connections ({now['conns']} seen by the probe): VmRSS {before['rss'] / 2**20:.1f} →"
          f" {now['rss'] / 2**20:.1f} MiB, {kib(now['rss'] - before['rss'])} per connection"
          f" (RssAnon {kib(now['anon'] - before['anon'])})")
    print(f"  per connection: transport buffer {kib(now['transport'])}, send BIO {kib(now['bio_out'])},"
          f" receive BIO {kib(now['bio_in'])}, TLS write buffer {kib(now['app_send'])},"
          f" kernel send queue {kib(now['outq'])} (not RSS); handed by the sender {kib(now['handed'])};"
          f" transports pausing their producer {now['producer_paused']}, senders paused {now['sender_paused']}")
    mb, ma = before["malloc"], now["malloc"]
    print(f"  glibc heap per connection: in use {kib(ma['in_use'] - mb['in_use'])}, free kept"
          f" {kib(ma['free'] - mb['free'])}, mmapped {kib(ma['mmapped'] - mb['mmapped'])}")
    if "traced" in now:
        print(f"  tracemalloc: {kib(now['traced'] - before.get('traced', 0))} traced per connection; top lines:")
        for where, size, count in now["top"][:15]:
            print(f"    {size / 1024:10.1f} KiB {count:7d} blocks  {where}")


def cut_report(when: str, n: int, before: dict, now: dict) -> None:
    print(f"  {when}: VmRSS {now['rss'] / 2**20:.1f} MiB ({(now['rss'] - before['rss']) / n / 1024:.1f} KiB per"
          f" connection still held; glibc heap free kept {(now['malloc']['free'] - before['malloc']['free']) / 2**20:.1f}"
          " MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=150)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--idle", action="store_true", help="idle keep-alive connections, not stalled GETs")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--cut", action="store_true", help="then close the clients: the VmRSS once the server let them go")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="seconds to wait once the buffers are stable (the server's slow-reader watch looks every 5 s)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    raise_nofile(args.connections)
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="izreg-stalled-tls-") as workdir:
        run(workdir, args.connections, args.size_mib * 2**20, args.idle, args.tracemalloc, env, args.settle, args.cut)


if __name__ == "__main__":
    main()
