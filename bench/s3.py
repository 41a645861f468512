"""
The ``s3`` mode: izreg with ``[storage] backend = "s3"`` over moto's S3
server on loopback, against izreg on its local disk, same workload (the
base run's pushes and pulls). moto (a Python test double, single process,
Flask) stores every part and copies objects in memory: it, not izreg, is
the ceiling of these figures; they show that the S3 path streams and what
it costs, not what a real object store would reach.

    python bench/run.py --modes s3 [--quick | --smoke]
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time

from bench.client import load, push_monolithic, push_streamed
from bench.common import MB, START_TIMEOUT, Blob, MiB, PeakRSS, free_port, size_label
from bench.servers import Izreg

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


class Moto:
    """moto's S3 server (``python -m moto.server``) on a free loopback port, with one bucket."""

    def __init__(self, workdir: str, python: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python, self.workdir = python, workdir
        self.proc: subprocess.Popen | None = None

    def start(self, bucket: str) -> None:
        self.log = open(os.path.join(self.workdir, "moto.log"), "ab")
        self.proc = subprocess.Popen([self.python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("PUT", f"/{bucket}")  # moto takes unsigned requests: create the bucket
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start; see {self.log.name}")
            time.sleep(0.2)

    def config_toml(self, bucket: str = "bench") -> str:
        """
        izreg's C{[storage]} for this server. moto on the bench's busy 2 CPUs may go quiet past izreg's
        60 s read_timeout while it swallows a big part: 300, as before that default (tests/helpers/s3.py too).
        """
        return (f'[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "{bucket}"\nendpoint_url = "{self.url}"\n'
                'region = "us-east-1"\nread_timeout = 300\n')

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        if getattr(self, "log", None):
            self.log.close()


class IzregS3(Izreg):
    name = "izreg-s3"

    def __init__(self, workdir: str, venv: str) -> None:
        super().__init__(workdir, venv)
        self.moto = Moto(workdir, self.python)
        self.config = os.path.join(workdir, "izreg-s3.toml")

    def _command(self) -> list[str]:
        return super()._command() + ["--config", self.config]

    def start(self) -> None:
        self.moto.start("bench")
        with open(self.config, "w") as f:
            f.write(self.moto.config_toml())
        os.environ.update(CREDENTIALS)  # the standard AWS_* variables, inherited by twistd
        super().start()

    def stop(self) -> None:
        super().stop()
        self.moto.stop()


def _push_pull(server, p: dict, log) -> dict:
    r: dict = {}
    largest = max(p["sizes"])
    for size in p["sizes"]:
        blob = None
        for mode, fn in (("monolithic", push_monolithic), ("streamed", push_streamed)):
            reps, took = p["push_reps"][size], 0.0
            with PeakRSS(server.pid) as m:
                for i in range(reps):
                    blob = Blob(f"{server.name}-{mode}-{size}-{i}", size)
                    took += fn(server, blob)
            r[f"push_{mode}_{size}"] = size * reps / took / MB
            if size == largest:
                r[f"rss_push_{mode}"] = m.peak
            log(f"  {server.name}: push {mode:10} {size_label(size):>7}: {r[f'push_{mode}_{size}']:8.1f} MB/s")
        reps = p["pull1_reps"][size]
        with PeakRSS(server.pid) as m:
            res = load(server, "GET", f"/v2/{server.repo}/blobs/{blob.digest}", 1, reps, warmup=0)
        if res["bytes"] != size * reps:
            raise RuntimeError(f"{server.name}: pulled {res['bytes']} bytes, expected {size * reps}")
        r[f"pull1_{size}"] = res["bytes"] / res["wall"] / MB
        if size == largest:
            r["rss_pull1"] = m.peak
        log(f"  {server.name}: pull x1      {size_label(size):>7}: {r[f'pull1_{size}']:8.1f} MB/s")
    return r


def run_s3(workdir: str, venv: str, p: dict, log) -> dict:
    """The same pushes and pulls on izreg over its disk and over S3 (moto): {"disk": ..., "s3": ...}."""
    out = {}
    for label, make in (("disk", lambda w: Izreg(w, venv)), ("s3", lambda w: IzregS3(w, venv))):
        where = os.path.join(workdir, f"s3-mode-{label}")
        os.makedirs(where)
        server = make(where)
        log(f"s3 mode, izreg on {label}:")
        server.start()
        try:
            out[label] = _push_pull(server, p, log)
        finally:
            server.stop()
    return out


def report_s3(p: dict, result: dict) -> list[str]:
    disk, s3 = result["disk"], result["s3"]
    lines = ["## izreg on S3 (moto on loopback) vs izreg on disk", "",
             "Same pushes and pulls, MB/s (10**6 bytes/s). moto, a single-process Python test double that keeps",
             "parts and copies in memory, is the ceiling here, not izreg: the row shows that blobs stream",
             "through the S3 backend with flat memory, not what a real object store would reach.", "",
             "| | disk | S3 (moto) | S3 / disk |", "|---|---:|---:|---:|"]
    for size in p["sizes"]:
        for key, label in ((f"push_monolithic_{size}", "push monolithic"), (f"push_streamed_{size}", "push streamed"),
                           (f"pull1_{size}", "pull x1")):
            lines.append(f"| {label} {size_label(size)} | {disk[key]:.1f} | {s3[key]:.1f} | {s3[key] / disk[key]:.2f} |")
    for key, label in (("rss_push_streamed", "peak RSS, largest streamed push"), ("rss_pull1", "peak RSS, largest pull")):
        lines.append(f"| {label} | {disk[key] / MiB:.0f} MiB | {s3[key] / MiB:.0f} MiB | |")
    return lines + [""]
