#!/usr/bin/env python3
"""
izreg vs CNCF distribution 2.8 (Debian ``docker-registry``), side by side.

    python bench/run.py [--quick] [--out docs/benchmark.md] [--venv /tmp/venv]

Starts each server in turn on 127.0.0.1 (a free port, a fresh temporary data
directory), runs the same measurements against both, stops it, and writes a
markdown report with the izreg / distribution ratio of every figure:

1. push: monolithic (POST, then PUT with the whole body, as containerd/oras
   do) and streamed (POST, one PATCH with chunked transfer-encoding in 32 KiB
   chunks as docker sends it, then PUT ?digest=) of 1 MiB, 64 MiB, 512 MiB
   blobs (512 MiB skipped with --quick); MB/s = 10**6 bytes/s;
2. pull: GET of the same blobs by 1 and by 8 concurrent clients (aggregate MB/s);
3. small requests: HEAD blob, GET manifest by tag, GET tags/list; 8
   keep-alive connections (8 client processes) share a fixed request count;
   requests/s, p50 and p99 latency;
4. server peak RSS (VmHWM, reset through /proc/PID/clear_refs, and a 20 ms
   VmRSS sampler) during the largest push and during the 8-client pulls;
5. izreg only: microseconds per access-key check (Authenticator.authenticate).

Only the standard library is used by the client side (raw sockets and
http.client; load generators are forked processes so they are not bound by
one GIL). Every loop is bounded; only loopback is used; both servers are
stopped (and their data removed) at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import timeit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
MB = 1e6
PATCH_CHUNK = 32 * 1024  # docker's io.Copy buffer: one chunked-encoding chunk each
SEND_BLOCK = 1 * MiB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 120.0


# --------------------------------------------------------------------------------------
# Blobs: a unique header and a shared random block, generated on the fly (no client disk)
# --------------------------------------------------------------------------------------

_BLOCK = os.urandom(SEND_BLOCK)


class Blob:
    """C{size} bytes: 64 bytes unique to C{label}, then a repeated random MiB."""

    def __init__(self, label: str, size: int) -> None:
        self.label, self.size = label, size
        self.head = hashlib.sha256(f"{label}/{time.time_ns()}/{os.getpid()}".encode()).digest() * 2
        h = hashlib.sha256()
        for block in self.blocks():
            h.update(block)
        self.digest = "sha256:" + h.hexdigest()

    def blocks(self, size: int = SEND_BLOCK):
        """The content as memoryviews of at most C{size} bytes."""
        block = memoryview(self.head + _BLOCK)
        sent, first = 0, True
        while sent < self.size:
            if first:
                src, first = block, False
            else:
                src = memoryview(_BLOCK)
            src = src[: self.size - sent]
            for i in range(0, len(src), size):
                piece = src[i : i + size]
                yield piece
                sent += len(piece)

    def bytes(self) -> bytes:
        return b"".join(bytes(b) for b in self.blocks())


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    name = "?"
    proc: subprocess.Popen | None = None

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = "127.0.0.1"
        self.headers: dict[str, str] = {}
        self.repo = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {self.port} in {START_TIMEOUT}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)


class Izreg(Server):
    name = "izreg"

    def __init__(self, workdir: str, venv: str) -> None:
        super().__init__(workdir)
        self.twistd = os.path.join(venv, "bin", "twistd")
        self.python = os.path.join(venv, "bin", "python")
        self.data = os.path.join(workdir, "izreg-data")
        self.log_path = os.path.join(workdir, "izreg.log")

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [self.twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "izreg", "server",
               "--data-dir", self.data, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        boot = os.path.join(self.data, "bootstrap.txt")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"izreg exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with open(self.log_path) as f:
                    started = f"starting on {self.port}" in f.read()
            except FileNotFoundError:
                started = False
            if started and os.path.exists(boot):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"izreg did not start in {START_TIMEOUT}s; see {self.log_path}")
        self._wait_port()
        values = {}
        for _ in range(50):  # the file may still be being written
            with open(boot) as f:
                values = dict(line.strip().split("=", 1) for line in f if "=" in line and not line.startswith("#"))
            if "access_key" in values and "account" in values:
                break
            time.sleep(0.1)
        self.key = values["access_key"]
        self.account = values["account"]
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.repo = f"{self.account}/bench"

    def version(self) -> str:
        try:
            return subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short=12", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        except Exception:
            return "unknown"


class Distribution(Server):
    name = "distribution"

    def __init__(self, workdir: str, account: str) -> None:
        super().__init__(workdir)
        self.data = os.path.join(workdir, "distribution-data")
        self.log_path = os.path.join(workdir, "distribution.log")
        self.config = os.path.join(workdir, "distribution.yml")
        self.repo = f"{account}/bench"
        self.binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.data}\n"
                "  delete:\n    enabled: true\n"
                "  cache:\n    blobdescriptor: inmemory\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n"
            )
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.binary, "serve", self.config], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        self._wait_port()

    def stop(self) -> None:
        super().stop()
        if getattr(self, "logf", None):
            self.logf.close()

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
            return out.strip().split()[-1]
        except Exception:
            return "unknown"


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of C{pid}, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRSS:
    """
    Peak resident memory of C{pid} over a ``with`` block (VmHWM after a reset,
    and sampled VmRSS), and the CPU time it used (C{cpu}, seconds).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.reset_ok = False

    def __enter__(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.sampled = _status(self.pid, "VmRSS")
        self._cpu0 = cpu_seconds(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled = max(self.sampled, _status(self.pid, "VmRSS"))
            except OSError:
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        hwm = _status(self.pid, "VmHWM") if self.reset_ok else 0
        self.peak = max(hwm, self.sampled)
        return False


# --------------------------------------------------------------------------------------
# Client: pushes (http.client, streaming from memoryviews)
# --------------------------------------------------------------------------------------


def _check(resp: http.client.HTTPResponse, codes: tuple[int, ...], what: str) -> bytes:
    body = resp.read()
    if resp.status not in codes:
        raise RuntimeError(f"{what}: HTTP {resp.status} {body[:300]!r}")
    return body


def _location(server: Server, resp: http.client.HTTPResponse) -> str:
    loc = resp.getheader("Location")
    if loc is None:
        raise RuntimeError("no Location in upload response")
    if loc.startswith("http://") or loc.startswith("https://"):
        loc = "/" + loc.split("/", 3)[3]
    return loc


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def _request(conn, method, url, headers, body_blocks=None, length=None, chunked=False):
    conn.putrequest(method, url, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    elif length is not None:
        conn.putheader("Content-Length", str(length))
    conn.endheaders()
    if body_blocks is not None:
        sock = conn.sock
        for block in body_blocks:
            if chunked:
                sock.sendall(b"%x\r\n" % len(block))
                sock.sendall(block)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(block)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    return conn.getresponse()


def push_monolithic(server: Server, blob: Blob) -> float:
    """POST, then PUT ?digest= with the whole body; seconds."""
    conn = server.conn()
    try:
        t0 = time.perf_counter()
        resp = _request(conn, "POST", f"/v2/{server.repo}/blobs/uploads/", server.headers, length=0)
        _check(resp, (202,), "POST upload")
        url = _with_query(_location(server, resp), f"digest={blob.digest}")
        h = dict(server.headers, **{"Content-Type": "application/octet-stream"})
        resp = _request(conn, "PUT", url, h, blob.blocks(SEND_BLOCK), length=blob.size)
        _check(resp, (201,), "PUT monolithic")
        return time.perf_counter() - t0
    finally:
        conn.close()


def push_streamed(server: Server, blob: Blob) -> float:
    """POST, one chunked PATCH (32 KiB chunks), then PUT ?digest= without a body; seconds."""
    conn = server.conn()
    try:
        t0 = time.perf_counter()
        resp = _request(conn, "POST", f"/v2/{server.repo}/blobs/uploads/", server.headers, length=0)
        _check(resp, (202,), "POST upload")
        url = _location(server, resp)
        h = dict(server.headers, **{"Content-Type": "application/octet-stream"})
        resp = _request(conn, "PATCH", url, h, blob.blocks(PATCH_CHUNK), chunked=True)
        _check(resp, (202,), "PATCH chunked")
        url = _with_query(_location(server, resp), f"digest={blob.digest}")
        resp = _request(conn, "PUT", url, server.headers, length=0)
        _check(resp, (201,), "PUT commit")
        return time.perf_counter() - t0
    finally:
        conn.close()


def push_small(server: Server, data: bytes, digest: str) -> None:
    conn = server.conn()
    try:
        resp = _request(conn, "POST", f"/v2/{server.repo}/blobs/uploads/", server.headers, length=0)
        _check(resp, (202,), "POST upload")
        url = _with_query(_location(server, resp), f"digest={digest}")
        resp = _request(conn, "PUT", url, dict(server.headers, **{"Content-Type": "application/octet-stream"}),
                        [data], length=len(data))
        _check(resp, (201,), "PUT small blob")
    finally:
        conn.close()


def put_manifest(server: Server, tag: str, body: bytes) -> None:
    conn = server.conn()
    try:
        resp = _request(conn, "PUT", f"/v2/{server.repo}/manifests/{tag}",
                        dict(server.headers, **{"Content-Type": OCI_MANIFEST}), [body], length=len(body))
        _check(resp, (201,), f"PUT manifest {tag}")
    finally:
        conn.close()


def get_verify(server: Server, blob: Blob) -> None:
    """GET a blob once and check its digest and length (outside the timings)."""
    conn = server.conn()
    try:
        resp = _request(conn, "GET", f"/v2/{server.repo}/blobs/{blob.digest}", server.headers)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = resp.read(SEND_BLOCK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if resp.status != 200 or n != blob.size or "sha256:" + h.hexdigest() != blob.digest:
            raise RuntimeError(f"{server.name}: GET {blob.label} returned {resp.status}, {n} bytes, wrong content?")
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# Client: load processes (raw keep-alive sockets)
# --------------------------------------------------------------------------------------


def _raw_request(method: str, host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawClient:
    """One keep-alive connection; reads Content-Length or chunked bodies into a reused buffer."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=REQUEST_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(SEND_BLOCK)
        self.view = memoryview(self.buf)
        self.pending = b""

    def _fill(self) -> None:
        n = self.sock.recv_into(self.buf)
        if n == 0:
            raise ConnectionError("server closed the connection")
        self.pending += self.buf[:n]

    def _line(self) -> bytes:
        while b"\r\n" not in self.pending:
            self._fill()
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line

    def _skip(self, length: int) -> None:
        take = min(length, len(self.pending))
        self.pending = self.pending[take:]
        length -= take
        while length > 0:
            n = self.sock.recv_into(self.view[: min(length, len(self.buf))])
            if n == 0:
                raise ConnectionError("server closed the connection mid-body")
            length -= n

    def request(self, raw: bytes, head: bool) -> tuple[int, int]:
        """Send C{raw}; return (status, body length)."""
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.pending:
            self._fill()
        header, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, chunked = None, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if head or status in (204, 304):
            return status, 0
        if chunked:
            total = 0
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return status, total
                self._skip(size)
                self._line()
                total += size
        if length is None:
            raise RuntimeError("response without length")
        self._skip(length)
        return status, length

    def close(self) -> None:
        self.sock.close()


def _worker(spec: dict, barrier, results) -> None:
    """Run C{spec["count"]} requests on one connection after the barrier; report timings."""
    try:
        client = RawClient(spec["host"], spec["port"])
        raw = _raw_request(spec["method"], spec["host"], spec["port"], spec["path"], spec["headers"])
        head = spec["method"] == "HEAD"
        for _ in range(spec["warmup"]):
            status, _ = client.request(raw, head)
            if status != 200:
                raise RuntimeError(f"warm-up {spec['method']} {spec['path']}: HTTP {status}")
        barrier.wait(60)
        lat = []
        nbytes = 0
        clock = time.perf_counter
        t_start = clock()
        for _ in range(spec["count"]):
            t0 = clock()
            status, n = client.request(raw, head)
            lat.append(clock() - t0)
            if status != 200:
                raise RuntimeError(f"{spec['method']} {spec['path']}: HTTP {status}")
            nbytes += n
        t_end = clock()
        client.close()
        results.put({"start": t_start, "end": t_end, "lat": lat, "bytes": nbytes})
    except BaseException as e:  # report, never hang the parent
        try:
            barrier.abort()
        except Exception:
            pass
        results.put({"error": f"{type(e).__name__}: {e}"})


def load(server: Server, method: str, path: str, clients: int, count: int, warmup: int,
         extra_headers: dict[str, str] | None = None) -> dict:
    """C{clients} processes share C{count} requests (keep-alive); aggregate figures."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    headers = dict(server.headers, **(extra_headers or {}))
    per = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    procs = []
    for i in range(clients):
        spec = {"host": server.host, "port": server.port, "method": method, "path": path,
                "headers": headers, "count": per[i], "warmup": warmup}
        p = ctx.Process(target=_worker, args=(spec, barrier, results), daemon=True)
        p.start()
        procs.append(p)
    try:
        barrier.wait(120)
    except Exception:
        pass
    got = []
    deadline = time.monotonic() + 600
    while len(got) < clients:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"load {method} {path}: workers timed out")
        got.append(results.get(timeout=remaining))
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    errors = [r["error"] for r in got if "error" in r]
    if errors:
        raise RuntimeError(f"load {method} {path}: {errors[0]}")
    wall = max(r["end"] for r in got) - min(r["start"] for r in got)
    lat = sorted(x for r in got for x in r["lat"])
    return {
        "wall": wall,
        "requests": len(lat),
        "bytes": sum(r["bytes"] for r in got),
        "rps": len(lat) / wall,
        "p50": lat[len(lat) // 2],
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def wrk_get(server: Server, path: str, seconds: int, extra_headers: dict[str, str]) -> dict | None:
    """Optional cross-check of GET rates with wrk (C client: less client CPU than ours)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    cmd = [wrk, "-t2", "-c8", f"-d{seconds}s", "--latency"]
    for k, v in dict(server.headers, **extra_headers).items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://{server.host}:{server.port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = p50 = p99 = None
    non2xx = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = _wrk_time(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _wrk_time(parts[1])
        elif line.strip().startswith("Non-2xx"):
            non2xx = int(parts[-1])
    if rps is None or non2xx:
        return None
    return {"rps": rps, "p50": p50, "p99": p99}


def _wrk_time(text: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


# --------------------------------------------------------------------------------------
# The benchmark for one server
# --------------------------------------------------------------------------------------


def merge(results: list[dict]) -> dict:
    """The mean of every figure over rounds; peak memory is the highest seen."""
    out: dict = {}
    for key, first in results[0].items():
        values = [r[key] for r in results if key in r]
        if isinstance(first, dict):
            out[key] = merge(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = max(values) if key.startswith("rss_") else sum(values) / len(values)
        else:
            out[key] = first
    return out


def plan(quick: bool) -> dict:
    if quick:
        return {
            "sizes": [1 * MiB, 64 * MiB],
            "push_reps": {1 * MiB: 5, 64 * MiB: 1},
            "pull1_reps": {1 * MiB: 16, 64 * MiB: 2},
            "pull8_reps": {1 * MiB: 4, 64 * MiB: 1},
            "small_count": 1600,
            "warmup": 10,
            "wrk_seconds": 1,
            "rounds": 1,
        }
    return {
        "sizes": [1 * MiB, 64 * MiB, 512 * MiB],
        "push_reps": {1 * MiB: 32, 64 * MiB: 4, 512 * MiB: 2},
        "pull1_reps": {1 * MiB: 128, 64 * MiB: 8, 512 * MiB: 2},
        "pull8_reps": {1 * MiB: 32, 64 * MiB: 4, 512 * MiB: 1},
        "small_count": 12000,
        "warmup": 25,
        "wrk_seconds": 3,
        "rounds": 2,
    }


def size_label(size: int) -> str:
    return f"{size // MiB} MiB"


def run_server(server: Server, p: dict, log) -> dict:
    r: dict = {"version": server.version()}
    t_all = time.monotonic()
    server.start()
    try:
        r["rss_idle"] = _status(server.pid, "VmRSS")
        largest = max(p["sizes"])
        pulled: dict[int, Blob] = {}

        # 1. pushes -------------------------------------------------------------------
        for size in p["sizes"]:
            for mode, fn in (("monolithic", push_monolithic), ("streamed", push_streamed)):
                total_t, total_cpu, blob = 0.0, 0.0, None
                reps = p["push_reps"][size]
                peak = 0
                for i in range(reps):
                    blob = Blob(f"{server.name}-{mode}-{size}-{i}", size)
                    with PeakRSS(server.pid) as m:
                        total_t += fn(server, blob)
                    peak = max(peak, m.peak)
                    total_cpu += m.cpu
                r[f"push_{mode}_{size}"] = size * reps / total_t / MB
                r[f"cpu_push_{mode}_{size}"] = total_cpu / (size * reps / 1e9)  # CPU s per GB
                if size == largest:
                    r[f"rss_push_{mode}"] = peak
                log(f"  {server.name}: push {mode:10} {size_label(size):>7}: {r[f'push_{mode}_{size}']:8.1f} MB/s"
                    + (f"  peak RSS {peak / MiB:.0f} MiB" if size == largest else ""))
                pulled[size] = blob
            if size <= 64 * MiB:
                get_verify(server, pulled[size])

        # a small image: config + the 1 MiB layer + a manifest under 20 tags -------------
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        push_small(server, config, config_digest)
        layer = pulled[1 * MiB]
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
        }, separators=(",", ":")).encode()
        for i in range(20):
            put_manifest(server, f"v{i}", manifest)

        # 2. pulls ------------------------------------------------------------------------
        for size in p["sizes"]:
            blob = pulled[size]
            path = f"/v2/{server.repo}/blobs/{blob.digest}"
            for clients, reps_key in ((1, "pull1_reps"), (8, "pull8_reps")):
                reps = p[reps_key][size]
                with PeakRSS(server.pid) as m:
                    res = load(server, "GET", path, clients, clients * reps, warmup=0)
                if res["bytes"] != size * clients * reps:
                    raise RuntimeError(f"{server.name}: pulled {res['bytes']} bytes, expected {size * clients * reps}")
                r[f"pull{clients}_{size}"] = res["bytes"] / res["wall"] / MB
                r[f"cpu_pull{clients}_{size}"] = m.cpu / (res["bytes"] / 1e9)
                if clients == 8 and size == largest:
                    r["rss_pull8"] = m.peak
                log(f"  {server.name}: pull x{clients} {size_label(size):>7}: {r[f'pull{clients}_{size}']:8.1f} MB/s"
                    + (f"  peak RSS {m.peak / MiB:.0f} MiB" if clients == 8 and size == largest else ""))

        # 3. small requests ------------------------------------------------------------------
        smalls = [
            ("head_blob", "HEAD", f"/v2/{server.repo}/blobs/{layer.digest}", {}),
            ("get_manifest", "GET", f"/v2/{server.repo}/manifests/v0", {"Accept": OCI_MANIFEST}),
            ("get_tags", "GET", f"/v2/{server.repo}/tags/list", {}),
        ]
        for key, method, path, extra in smalls:
            cpu0 = cpu_seconds(server.pid)
            res = load(server, method, path, 8, p["small_count"], p["warmup"], extra)
            # includes the warm-up requests (8 x warmup), counted in
            res["cpu_us"] = (cpu_seconds(server.pid) - cpu0) / (p["small_count"] + 8 * p["warmup"]) * 1e6
            r[key] = res
            log(f"  {server.name}: {key:12}: {res['rps']:8.0f} req/s  p50 {res['p50'] * 1e3:6.2f} ms"
                f"  p99 {res['p99'] * 1e3:6.2f} ms  server CPU {res['cpu_us']:.0f} us/req")
        for key, _, path, extra in smalls[1:]:
            res = wrk_get(server, path, p["wrk_seconds"], extra)
            if res is not None:
                r["wrk_" + key] = res
                log(f"  {server.name}: wrk {key:8}: {res['rps']:8.0f} req/s  p50 {res['p50'] * 1e3:6.2f} ms"
                    f"  p99 {res['p99'] * 1e3:6.2f} ms")
        r["rss_end"] = _status(server.pid, "VmRSS")
    finally:
        server.stop()
    r["elapsed"] = time.monotonic() - t_all
    return r


# --------------------------------------------------------------------------------------
# izreg only: the access-key check
# --------------------------------------------------------------------------------------


def access_key_check(workdir: str, n: int) -> dict:
    sys.path.insert(0, REPO_ROOT)
    from izreg.auth.authenticator import Authenticator
    from izreg.auth.store import AuthStore
    from izreg.storage.lmdbenv import open_env

    env = open_env(os.path.join(workdir, "auth-bench"), map_size=64 * MiB)
    try:
        store = AuthStore(env)
        clock = [time.time()]
        account = store.create_account(clock[0], "bench")
        _, key = store.create_key(account.account_id, clock[0], "bench")
        auth = Authenticator(store, now=lambda: clock[0])
        bearer = f"Bearer {key.reveal()}".encode()
        basic = b"Basic " + base64.b64encode(f"KEY:{key.reveal()}".encode())
        out = {}
        for label, header in (("bearer", bearer), ("basic", basic)):
            p = auth.authenticate(header, "127.0.0.1")
            assert p.account == account.account_id
            best = min(timeit.repeat(lambda: auth.authenticate(header, "127.0.0.1"), number=n, repeat=5))
            out[label] = best / n * 1e6
        # the parts: LMDB read, and the hash
        from izreg.auth import keys
        rec = store.get_key(key.key_id)
        out["lmdb_get"] = min(timeit.repeat(lambda: store.get_key(key.key_id), number=n, repeat=5)) / n * 1e6
        out["hash_verify"] = min(timeit.repeat(lambda: keys.verify(key, rec.secret_hash), number=n, repeat=5)) / n * 1e6
        out["n"] = n
        return out
    finally:
        env.close()


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = _meminfo_total()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "mem": mem}


def _meminfo_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "unknown"


def _ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def report(args, p, iz: dict, di: dict, keycheck: dict, m: dict, venv_python: str, elapsed: float,
           runs: dict[str, list[dict]]) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = ("python bench/run.py" + (" --quick" if args.quick else "")
           + (f" --rounds {args.rounds}" if args.rounds is not None else "") + (f" --out {args.out}" if args.out else ""))
    nrounds = len(runs["izreg"])
    pyver = subprocess.run([venv_python, "-c", "import platform; print(platform.python_version())"],
                           capture_output=True, text=True).stdout.strip() or m["python"]
    L = []
    L.append("# izreg vs distribution: benchmark\n")
    L.append(f"Generated by `{cmd}` (bench/run.py) on {now}; the whole run took {elapsed:.0f} s.\n")
    L.append("| | |\n|---|---|")
    L.append(f"| machine | {m['nproc']} CPUs, {m['cpu']}, {m['mem']} RAM, Linux {m['kernel']} |")
    L.append(f"| Python (izreg server) | {pyver} (client: {m['python']}) |")
    L.append(f"| izreg | git {iz['version']} (twistd, one process, default settings, Bearer access key on every request) |")
    L.append(f"| distribution | {di['version']} (Debian `docker-registry`; filesystem storage, "
             "`blobdescriptor: inmemory` cache, no auth, log level warn) |")
    L.append("| network | loopback (127.0.0.1), plain HTTP/1.1; client and server share the CPUs |")
    L.append("")
    L.append(f"Each figure is the mean of {nrounds} round{'s' if nrounds > 1 else ''} per server "
             "(a fresh server and data directory each round, ABBA order; per-round figures at the end). "
             "Ratio = izreg / distribution: above 1 means izreg is faster (throughput) or, for latency, "
             "server CPU and memory, that izreg uses more. MB = 10^6 bytes.\n")

    def row(label, a, b, fmt="{:.1f}"):
        fa = "–" if a is None else fmt.format(a)
        fb = "–" if b is None else fmt.format(b)
        L.append(f"| {label} | {fa} | {fb} | {_ratio(a, b)} |")

    def row2(label, a, b, ca, cb):
        L.append(f"| {label} | {a:.1f} | {b:.1f} | {_ratio(a, b)} | {ca:.2f} | {cb:.2f} | {_ratio(ca, cb)} |")

    cpu_head = ("| blob | izreg MB/s | distribution MB/s | ratio | izreg server CPU s/GB | "
                "distribution server CPU s/GB | CPU ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    L.append("## Push (one client)\n")
    L.append(cpu_head)
    for size in p["sizes"]:
        reps = p["push_reps"][size]
        for mode, text in (("monolithic", "monolithic POST + PUT"), ("streamed", "streamed chunked PATCH")):
            row2(f"{size_label(size)}, {text} (×{reps})", iz[f"push_{mode}_{size}"], di[f"push_{mode}_{size}"],
                 iz[f"cpu_push_{mode}_{size}"], di[f"cpu_push_{mode}_{size}"])
    L.append("")
    L.append("## Pull (GET blob, aggregate)\n")
    L.append(cpu_head)
    for size in p["sizes"]:
        for clients, key in ((1, "pull1_reps"), (8, "pull8_reps")):
            row2(f"{size_label(size)}, {clients} client{'s' if clients > 1 else ''} (×{p[key][size]} each)",
                 iz[f"pull{clients}_{size}"], di[f"pull{clients}_{size}"],
                 iz[f"cpu_pull{clients}_{size}"], di[f"cpu_pull{clients}_{size}"])
    L.append("")
    L.append(f"## Small requests (8 keep-alive connections, {p['small_count']} requests, "
             "8 forked Python client processes)\n")
    L.append("| request | izreg req/s | distribution req/s | ratio | izreg p50 / p99 ms | distribution p50 / p99 ms "
             "| p50 ratio | izreg server CPU µs/req | distribution server CPU µs/req | CPU ratio |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    names = {"head_blob": "HEAD blob", "get_manifest": "GET manifest by tag", "get_tags": "GET tags/list (20 tags)"}
    for key, label in names.items():
        a, b = iz[key], di[key]
        L.append(f"| {label} | {a['rps']:.0f} | {b['rps']:.0f} | {_ratio(a['rps'], b['rps'])} | "
                 f"{a['p50'] * 1e3:.2f} / {a['p99'] * 1e3:.2f} | {b['p50'] * 1e3:.2f} / {b['p99'] * 1e3:.2f} | "
                 f"{_ratio(a['p50'], b['p50'])} | {a['cpu_us']:.0f} | {b['cpu_us']:.0f} | "
                 f"{_ratio(a['cpu_us'], b['cpu_us'])} |")
    if "wrk_get_manifest" in iz and "wrk_get_manifest" in di:
        L.append("")
        L.append(f"Cross-check with `wrk -t2 -c8 -d{p['wrk_seconds']}s` (a C client, so less client CPU is "
                 "taken from the servers; wrk cannot send HEAD):\n")
        L.append("| request | izreg req/s | distribution req/s | ratio | izreg p50 / p99 ms | distribution p50 / p99 ms |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for key in ("get_manifest", "get_tags"):
            a, b = iz.get("wrk_" + key), di.get("wrk_" + key)
            if a and b:
                L.append(f"| {names[key]} | {a['rps']:.0f} | {b['rps']:.0f} | {_ratio(a['rps'], b['rps'])} | "
                         f"{a['p50'] * 1e3:.2f} / {a['p99'] * 1e3:.2f} | {b['p50'] * 1e3:.2f} / {b['p99'] * 1e3:.2f} |")
    L.append("")
    largest = size_label(max(p["sizes"]))
    L.append("## Server memory (peak RSS, MiB)\n")
    L.append("Peak = VmHWM after resetting it through `/proc/PID/clear_refs` at the start of the phase "
             "(and at least the highest VmRSS sampled every 20 ms).\n")
    L.append("| phase | izreg | distribution | ratio |\n|---|---:|---:|---:|")
    row("idle, just started", iz["rss_idle"] / MiB, di["rss_idle"] / MiB, "{:.0f}")
    row(f"during the {largest} monolithic push", iz["rss_push_monolithic"] / MiB, di["rss_push_monolithic"] / MiB, "{:.0f}")
    row(f"during the {largest} streamed push", iz["rss_push_streamed"] / MiB, di["rss_push_streamed"] / MiB, "{:.0f}")
    row(f"during 8 concurrent pulls of {largest}", iz["rss_pull8"] / MiB, di["rss_pull8"] / MiB, "{:.0f}")
    row("at the end of the run", iz["rss_end"] / MiB, di["rss_end"] / MiB, "{:.0f}")
    L.append("")
    L.append("## izreg only: access-key check\n")
    L.append(f"`Authenticator.authenticate()` over a temporary LMDB environment, best of 5 × {keycheck['n']} calls "
             "(`timeit`), in the benchmark's Python:\n")
    L.append("| check | µs per call |\n|---|---:|")
    L.append(f"| `Authorization: Bearer <access key>` | {keycheck['bearer']:.1f} |")
    L.append(f"| `Authorization: Basic base64(KEY:<access key>)` | {keycheck['basic']:.1f} |")
    L.append(f"| of which: `AuthStore.get_key` (one LMDB read + JSON decode) | {keycheck['lmdb_get']:.1f} |")
    L.append(f"| of which: `keys.verify` (SHA-256 + compare_digest) | {keycheck['hash_verify']:.1f} |")
    L.append("")
    L.append("## Method\n")
    L.append("- Each server runs alone (one after the other) with a fresh data directory in a temporary "
             "folder, on a free loopback port; both are stopped and their data removed at the end.")
    L.append("- Blob content: 64 unique bytes then a repeated random MiB (incompressible, a new digest per push). "
             "Push throughput is measured from the POST to the final 201 (the server's hashing, fsync and commit included). "
             "The streamed PATCH sends 32 KiB chunked-encoding chunks, like docker's `io.Copy`.")
    L.append("- Each pull is checked for length (and a 1 MiB and 64 MiB GET for content, outside the timings).")
    L.append("- Load is generated by forked Python processes, one keep-alive connection each, started "
             "together behind a barrier; throughput = all bytes or requests / (last finish − first start).")
    L.append("- Server CPU = user + system time of the server process (all threads, from /proc/PID/stat) "
             "during the phase, per GB moved or per request: the server's own cost, independent of how "
             "much CPU the client took.")
    L.append("- distribution runs without auth; izreg checks the access key on every request (its cost is "
             "in the last table), so the small-request rows include izreg's authentication.")
    L.append("- izreg fsyncs every blob before answering 201 (and its upload file on each PATCH); "
             "distribution's filesystem driver does not fsync.")
    L.append("- On a 2-CPU machine the client processes compete with the server for the CPUs; figures are "
             "comparable between the two servers, not absolute capacities.")
    L.append("")
    L.append("<details><summary>Per-round figures (MB/s, req/s)</summary>\n")
    keys = [k for k in runs["izreg"][0] if k.startswith(("push_", "pull"))]
    keys += [k for k in ("head_blob", "get_manifest", "get_tags")]
    L.append("| figure | " + " | ".join(f"izreg #{i + 1}" for i in range(nrounds)) + " | "
             + " | ".join(f"distribution #{i + 1}" for i in range(nrounds)) + " |")
    L.append("|---|" + "---:|" * (2 * nrounds))
    for k in keys:
        vals = [r[k]["rps"] if isinstance(r[k], dict) else r[k] for r in runs["izreg"] + runs["distribution"]]
        L.append(f"| {k} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
    L.append("\n</details>\n")
    return "\n".join(L)


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (no 512 MiB blobs), under a minute")
    ap.add_argument("--out", default=None, help="write the markdown report here (default: print it)")
    ap.add_argument("--venv", default=os.environ.get("IZREG_VENV", "/tmp/venv"),
                    help="virtualenv with twistd and izreg's dependencies (default /tmp/venv)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs of each server, in ABBA order, averaged (default 2, 1 with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    ap.add_argument("--keycheck", type=int, default=None, help=argparse.SUPPRESS)  # internal: run 5. in the venv
    ap.add_argument("--keycheck-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keycheck is not None:
        print(json.dumps(access_key_check(args.keycheck_dir, args.keycheck)))
        return 0

    if not os.path.exists(os.path.join(args.venv, "bin", "twistd")):
        print(f"no twistd in {args.venv}/bin; pass --venv", file=sys.stderr)
        return 2
    if not (shutil.which("docker-registry") or os.path.exists("/usr/bin/docker-registry")):
        print("docker-registry not found: apt-get install -y docker-registry", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    p = plan(args.quick)
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="izreg-bench-")
    log(f"working in {workdir}")
    servers: list[Server] = []
    rounds = args.rounds if args.rounds is not None else p["rounds"]
    account = os.urandom(16).hex()  # distribution's repository: <32 hex>/bench, like izreg's
    runs: dict[str, list[dict]] = {"izreg": [], "distribution": []}
    try:
        for rnd in range(rounds):
            # ABBA order: izreg, distribution, distribution, izreg, ... so neither always goes first
            order = ["izreg", "distribution"] if rnd % 2 == 0 else ["distribution", "izreg"]
            for which in order:
                where = os.path.join(workdir, f"{which}-{rnd}")
                os.makedirs(where)
                server = Izreg(where, args.venv) if which == "izreg" else Distribution(where, account)
                servers.append(server)
                log(f"round {rnd + 1}/{rounds}, {which}:")
                runs[which].append(run_server(server, p, log))
                if not args.keep:
                    shutil.rmtree(server.data, ignore_errors=True)
                os.sync()  # let the page cache drain so the next server starts on a quiet disk
                time.sleep(1)
        iz, di = merge(runs["izreg"]), merge(runs["distribution"])
        log("access-key check:")
        out = subprocess.run([os.path.join(args.venv, "bin", "python"), os.path.abspath(__file__),
                              "--keycheck", str(2000 if args.quick else 20000), "--keycheck-dir", workdir],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"access-key check failed: {out.stderr[-2000:]}")
        keycheck = json.loads(out.stdout)
        log(f"  bearer {keycheck['bearer']:.1f} us, basic {keycheck['basic']:.1f} us")
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(args, p, iz, di, keycheck, machine(), os.path.join(args.venv, "bin", "python"),
                  time.monotonic() - t0, runs)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
