#!/usr/bin/env python3
"""
Blob GETs of izreg and distribution side by side, with where the CPU and the
packets went: what bench/run.py's pull rows do not show.

    python bench/pullstats.py [--size 512] [--count 2] [--clients 1] [--rounds 3]
                              [--tls] [--venv /tmp/venv] [--izreg-root DIR]

One server of each, the blob pushed once and read once; then C{--rounds}
times, alternating which goes first (ABBA), C{--count} GETs by C{--clients}
keep-alive clients. Each line: throughput, the serving process's and the
clients' CPU seconds per GB (user / system, from /proc and getrusage), and the
system-wide TCP counters that moved (C{nstat}: retransmissions, out-of-order
segments, delayed ACKs, zero windows), which on loopback show segments the
client had already been sent again. With C{--tls}, over TLS (izreg: a device
certificate). C{--izreg-root}: izreg's code from that directory (a C{git
archive} of another commit, or a tree with one constant changed).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import servers  # noqa: E402
from bench.client import load, push_monolithic  # noqa: E402
from bench.common import MiB, Blob  # noqa: E402

#: the nstat counters worth a look for a bulk transfer on loopback
COUNTERS = ("RetransSegs", "DelayedACKLost", "FastRetrans", "OFOQueue", "WantZeroWindowAdv", "RcvCollapsed", "PruneCalled")


def _cpu(pid: int) -> tuple[float, float]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _nstat() -> dict[str, int]:
    if shutil.which("nstat") is None:
        return {}
    out = subprocess.run(["nstat", "-az"], capture_output=True, text=True).stdout
    counts = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def measure(server, path: str, args) -> str:
    pid = server.tls_pid if args.tls else server.pid
    c0, n0, r0 = _cpu(pid), _nstat(), resource.getrusage(resource.RUSAGE_CHILDREN)
    res = load(server, "GET", path, args.clients, args.count, warmup=0, tls=args.tls)
    c1, n1, r1 = _cpu(pid), _nstat(), resource.getrusage(resource.RUSAGE_CHILDREN)
    gb = res["bytes"] / 1e9
    moved = {k.replace("TcpExt", "").replace("Tcp", ""): n1[k] - n0.get(k, 0) for k in n1
             if n1[k] != n0.get(k, 0) and k.replace("TcpExt", "").replace("Tcp", "") in COUNTERS}
    return (f"{server.name:12} {gb / res['wall']:6.2f} GB/s  server {(c1[0] - c0[0]) / gb:.2f}/{(c1[1] - c0[1]) / gb:.2f}"
            f"  clients {(r1.ru_utime - r0.ru_utime) / gb:.2f}/{(r1.ru_stime - r0.ru_stime) / gb:.2f} s/GB  "
            + " ".join(f"{k} {v}" for k, v in sorted(moved.items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="blob size in MiB")
    ap.add_argument("--count", type=int, default=2, help="GETs per round and server")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--venv", default=os.environ.get("IZREG_VENV", "/tmp/venv"))
    ap.add_argument("--izreg-root", help="izreg's code from here (default: this checkout)")
    args = ap.parse_args()
    if args.izreg_root:
        servers.REPO_ROOT = os.path.abspath(args.izreg_root)
    work = tempfile.mkdtemp(prefix="izreg-pullstats-")
    both = [servers.Izreg(os.path.join(work, "izreg"), args.venv, tls=args.tls),
            servers.Distribution(os.path.join(work, "distribution"), os.urandom(16).hex(), tls=args.tls)]
    try:
        for server in both:
            os.makedirs(server.workdir)
            server.start()
        blob = Blob("pullstats", args.size * MiB)
        paths = {}
        for server in both:
            push_monolithic(server, blob)
            paths[server.name] = f"/v2/{server.repo}/blobs/{blob.digest}"
            load(server, "GET", paths[server.name], 1, 1, warmup=0, tls=args.tls)  # into the page cache
        print(f"{args.size} MiB, {args.count} GETs by {args.clients} client(s){' over TLS' if args.tls else ''}; "
              "CPU user/system", flush=True)
        for n in range(args.rounds):
            for server in both if n % 2 == 0 else both[::-1]:
                print(f"round {n + 1} " + measure(server, paths[server.name], args), flush=True)
    finally:
        for server in both:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
