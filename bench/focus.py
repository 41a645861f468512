#!/usr/bin/env python3
"""
A few figures of bench/run.py, izreg and distribution alternating (ABBA), to
measure one change on a shared machine:

    python bench/focus.py [--figures pull1_64,push4_streamed_64,tls4_64] [--rounds 4] [--reps 3]
                          [--venv /tmp/venv] [--izreg-root DIR]

Each figure runs C{--reps} times per round on each server (one fresh server of
each for the whole run); every measurement prints MB/s and the serving
process's CPU seconds per GB, and the end gives the medians and the ratios.
Figures: C{small<clients>_<tags|manifest|headblob>} (the small-requests mode's GET tags/list, GET
manifest by tag and HEAD blob, 6000 keep-alive requests: requests per second and server CPU us per
request), C{pull<clients>_<MiB>} (plain GET), C{tls<clients>_<MiB>} (GET over
TLS; izreg with a device certificate), C{push<clients>_<mode>_<MiB>} (mode:
monolithic or streamed), C{hs<clients>_full} and C{hs<clients>_resumed} (new
TLS connections with a device certificate, one GET of the tag list each:
connections per second and server CPU ms per connection; distribution on its
listener that verifies client certificates). With C{--izreg-root}, izreg's code comes from that
directory (e.g. a C{git archive} of another commit), so two versions of izreg
can be compared in the same minutes (C{--against-root}: the second izreg
instead of distribution).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import servers  # noqa: E402
from bench.client import get_verify, handshakes, load, push_concurrent, push_monolithic, push_small, put_manifest  # noqa: E402
from bench.common import MB, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, MiB, Blob, cpu_seconds, pinned, placement  # noqa: E402
from bench.servers import Distribution, Izreg  # noqa: E402


class RootedIzreg(Izreg):
    """izreg whose code comes from C{root} (its PYTHONPATH), not from this checkout."""

    def __init__(self, workdir: str, venv: str, root: str, tls: bool, name: str) -> None:
        super().__init__(workdir, venv, tls=tls)
        self.root, self.name = root, name

    def _start(self) -> None:
        saved = servers.REPO_ROOT
        servers.REPO_ROOT = self.root
        try:
            super()._start()
        finally:
            servers.REPO_ROOT = saved


#: connections per handshake measurement
HANDSHAKES = 1000
#: requests per small-request measurement (as bench/run.py's small-requests mode)
SMALL_REQUESTS = 6000


def measure(server, figure: str, blobs: dict) -> tuple[float, float]:
    """One measurement of C{figure}: (MB/s, server CPU s/GB), or for handshakes (per second, CPU ms each)."""
    m = re.fullmatch(r"hs(\d+)_(full|resumed)", figure)
    if m:
        if "tags" not in blobs:
            blobs["tags"] = _tagged(server)
        mtls = getattr(server, "mtls_port", None)  # distribution: the listener that verifies client certificates
        pid = server.mtls_pid if mtls else server.tls_pid
        cpu0 = cpu_seconds(pid)
        res = handshakes(server, f"/v2/{server.repo}/tags/list", int(m.group(1)), HANDSHAKES, m.group(2) == "resumed",
                         mtls, server.mtls_client if mtls else None)
        return res["rps"], (cpu_seconds(pid) - cpu0) / res["requests"] * 1e3
    m = re.fullmatch(r"small(\d+)_(tags|manifest|headblob)", figure)
    if m:  # the small-requests mode's requests: requests per second, server CPU us per request
        if "tags" not in blobs:
            blobs["tags"] = _tagged(server)
        clients, what = int(m.group(1)), m.group(2)
        method, path = {"tags": ("GET", f"/v2/{server.repo}/tags/list"),
                        "manifest": ("GET", f"/v2/{server.repo}/manifests/v1"),
                        "headblob": ("HEAD", f"/v2/{server.repo}/blobs/{blobs['tags']}")}[what]
        cpu0 = cpu_seconds(server.pid)
        res = load(server, method, path, clients, SMALL_REQUESTS, 20)
        return res["rps"], (cpu_seconds(server.pid) - cpu0) / (res["requests"] + 20 * clients) * 1e6
    m = re.fullmatch(r"(pull|tls)(\d+)_(\d+)", figure)
    if m:
        kind, clients, size = m.group(1), int(m.group(2)), int(m.group(3)) * MiB
        if size not in blobs:
            blobs[size] = Blob(f"{server.name}-focus-{size}", size)
            push_monolithic(server, blobs[size])
            get_verify(server, blobs[size])  # as bench/run.py: timed pulls read the page cache on both servers
        tls = kind == "tls"
        pid = server.tls_pid if tls else server.pid
        reps = max(1, (256 * MiB) // (size * clients))
        place = placement() if clients == 1 else None  # as bench/run.py's one-client pulls
        cpu0 = cpu_seconds(pid)
        with pinned(pid, place and place[0]):
            res = load(server, "GET", f"/v2/{server.repo}/blobs/{blobs[size].digest}", clients, clients * reps, 0,
                       tls=tls, cpus=place and place[1])
    else:
        m = re.fullmatch(r"push(\d+)_(monolithic|streamed)_(\d+)", figure)
        if not m:
            raise SystemExit(f"unknown figure {figure}")
        clients, mode, size = int(m.group(1)), m.group(2), int(m.group(3)) * MiB
        pid = server.pid
        cpu0 = cpu_seconds(pid)
        res = push_concurrent(server, mode, size, clients, max(1, (128 * MiB) // (size * clients)))
    cpu = cpu_seconds(pid) - cpu0
    return res["bytes"] / res["wall"] / MB, cpu / (res["bytes"] / 1e9)


def _tagged(server) -> str:
    """A small image under 20 tags (the tag list the handshake figures GET), as bench/run.py pushes: its config's digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    push_small(server, config, config_digest)
    layer = Blob(f"{server.name}-focus-layer", MiB)
    push_monolithic(server, layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    }, separators=(",", ":")).encode()
    for i in range(20):
        put_manifest(server, f"v{i}", manifest)
    return config_digest


def _units(figure: str) -> str:
    if figure.startswith("small"):
        return "req/s us/req"
    return "conn/s ms/conn" if figure.startswith("hs") else "MB/s s/GB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default="pull1_64,push4_streamed_64")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--venv", default=os.environ.get("IZREG_VENV", "/tmp/venv"))
    ap.add_argument("--izreg-root", default=None, help="izreg's code from here (default: this checkout)")
    ap.add_argument("--against-root", default=None, help="compare with a second izreg from here, not distribution")
    args = ap.parse_args()
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    tls = any(f.startswith(("tls", "hs")) for f in figures)
    workdir = tempfile.mkdtemp(prefix="izreg-focus-")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    a = RootedIzreg(os.path.join(workdir, "a"), args.venv, args.izreg_root or here, tls, "izreg")
    b = (RootedIzreg(os.path.join(workdir, "b"), args.venv, args.against_root, tls, "izreg-b") if args.against_root
         else Distribution(os.path.join(workdir, "b"), os.urandom(16).hex(), tls=tls,
                           python=os.path.join(args.venv, "bin", "python")))
    results: dict = {(s.name, f): [] for s in (a, b) for f in figures}
    blobs: dict = {a.name: {}, b.name: {}}
    try:
        for s in (a, b):
            os.makedirs(s.workdir)
            s.start()
        for rnd in range(args.rounds):
            for s in ((a, b) if rnd % 2 == 0 else (b, a)):
                for f in figures:
                    for _ in range(args.reps):
                        rate, cpu = measure(s, f, blobs[s.name])
                        results[(s.name, f)].append((rate, cpu))
                        unit, cpu_unit = _units(f).split()
                        print(f"round {rnd + 1} {s.name:12} {f:22} {rate:8.1f} {unit} {cpu:7.3f} {cpu_unit} "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                time.sleep(0.5)
    finally:
        for s in (a, b):
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    for f in figures:
        ra = [r for r, _ in results[(a.name, f)]]
        rb = [r for r, _ in results[(b.name, f)]]
        ca = [c for _, c in results[(a.name, f)]]
        cb = [c for _, c in results[(b.name, f)]]
        rate, cpu = _units(f).split()
        print(f"{f:22} {a.name} {statistics.median(ra):8.1f} {rate} {statistics.median(ca):5.2f} {cpu} | "
              f"{b.name} {statistics.median(rb):8.1f} {rate} {statistics.median(cb):5.2f} {cpu} | "
              f"ratio {statistics.median(ra) / statistics.median(rb):.2f}, CPU {statistics.median(ca) / statistics.median(cb):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
