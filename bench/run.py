#!/usr/bin/env python3
"""
izreg vs CNCF distribution 2.8 (Debian ``docker-registry``), side by side.

    python bench/run.py [--quick | --smoke] [--modes base,tls,handshake,catalog,idle] [--soak 30m]
                        [--soak-on single|cluster] [--rounds 3] [--note TEXT] [--out docs/benchmark.md]
                        [--venv /tmp/venv]

Starts each server in turn on 127.0.0.1 (a free port, a fresh temporary data
directory), runs the same measurements against both, stops it, and writes a
markdown report with the izreg / distribution ratio of every figure (the
median over rounds):

1. push: monolithic (POST, then PUT with the whole body, as containerd/oras
   do) and streamed (POST, one PATCH with chunked transfer-encoding in 32 KiB
   chunks as docker sends it, then PUT ?digest=) of 1 MiB, 64 MiB, 512 MiB
   blobs (512 MiB skipped with --quick); MB/s = 10**6 bytes/s;
2. pull: GET of the same blobs by 1 and by 8 concurrent clients (aggregate MB/s),
   each blob read once before (its digest checked), so both servers serve it
   from the page cache; then one GET of the largest blob after both servers'
   files of it were dropped from the page cache (a read from the disk);
3. small requests: HEAD blob, GET manifest by tag, GET tags/list; 8
   keep-alive connections (8 client processes) share a fixed request count;
   requests/s, p50 and p99 latency;
4. server peak RSS (VmHWM, reset through /proc/PID/clear_refs, and a 20 ms
   VmRSS sampler) during the largest push and during the 8-client pulls;
5. izreg only: microseconds per access-key check (Authenticator.authenticate);

and the modes of bench/modes.py: ``tls`` (blob GETs over HTTPS, izreg's
client with a device certificate), ``handshake`` (TLS connections per second,
full and resumed), ``catalog`` (_catalog and tags/list pages at 1,000 and
10,000 repositories x 20 tags), ``idle`` (manifest GET latency of 32 clients
with 1,000 idle keep-alive connections open), and ``--soak DURATION`` (izreg
alone: 32 mixed clients, RSS over time, after ``--soak-warmup`` (5m)). With
``--soak-on cluster`` the soak's clients go through haproxy to
``--soak-nodes`` (2) izreg nodes on PostgreSQL and moto's S3 instead (the
setup of the ``cluster`` mode, bench/cluster.py): the RSS curve of each node,
of haproxy, PostgreSQL and moto; e.g. the soak alone:
``python bench/run.py --modes "" --soak 30m --soak-warmup 3m --soak-on cluster``.

Module map: bench/common.py (constants, blobs, CPU and memory of a process),
bench/servers.py (the two servers, with TLS), bench/client.py (pushes and
forked load processes), bench/modes.py, bench/report.py (markdown);
bench/PROFILE.md (py-spy findings, copied into the report).

Only the standard library is used by the client side (raw sockets, ssl and
http.client; load generators are forked processes so they are not bound by
one GIL). Every loop is bounded; only loopback is used; both servers are
stopped (and their data removed) at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.client import (  # noqa: E402
    get_verify,
    load,
    push_concurrent,
    push_monolithic,
    push_small,
    push_streamed,
    put_manifest,
    wrk_get,
)
from bench.common import (  # noqa: E402
    MB, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, REPO_ROOT, Blob, MiB, PeakRSS, _status, cpu_seconds, evict, pinned, placement,
    size_label,
)
from bench.modes import (  # noqa: E402
    SOAK_CONFIG,
    index_stats_of,
    parse_duration,
    report_catalog,
    report_handshakes,
    report_idle,
    report_soak,
    report_tls_pulls,
    run_catalog,
    run_handshakes,
    run_idle,
    run_soak,
    run_tls_pulls,
)
from bench.report import machine, report  # noqa: E402
from bench.servers import Distribution, Izreg, Server, izreg_version  # noqa: E402


# --------------------------------------------------------------------------------------
# The benchmark for one server
# --------------------------------------------------------------------------------------


def merge(results: list[dict]) -> dict:
    """The median of every figure over rounds (the mean of two); peak memory is the highest seen."""
    out: dict = {}
    for key, first in results[0].items():
        values = [r[key] for r in results if key in r]
        if isinstance(first, dict):
            out[key] = merge(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = max(values) if key.startswith("rss_") else statistics.median(values)
        else:
            out[key] = first
    return out


#: the modes beside the base run (push, pull, small requests): see bench/modes.py
MODES = ("tls", "handshake", "catalog", "idle")


def plan(kind: str) -> dict:
    """How much of everything: C{full}, C{quick} (no 512 MiB, under a few minutes) or C{smoke} (seconds)."""
    full = {
        "sizes": [1 * MiB, 64 * MiB, 512 * MiB],
        "push_reps": {1 * MiB: 32, 64 * MiB: 4, 512 * MiB: 2},
        "pull1_reps": {1 * MiB: 64, 64 * MiB: 6, 512 * MiB: 2},
        "pull8_reps": {1 * MiB: 16, 64 * MiB: 2, 512 * MiB: 1},
        "push4_reps": {1 * MiB: 16, 64 * MiB: 2},
        "small_count": 6000,
        "warmup": 25,
        "wrk_seconds": 3,
        "rounds": 3,
        "tls_sizes": [64 * MiB, 512 * MiB],
        "tls_reps": {64 * MiB: 6, 512 * MiB: 1},
        "handshakes": 1000,
        "handshake_clients": 4,
        "catalog_repos": (1000, 10000, 20),
        "catalog_count": 200,
        "catalog_rounds": 1,
        "page": 100,
        "idle_conns": 1000,
        "idle_clients": 32,
        "idle_count": 6400,
        "pin": True,  # one-client blob pulls: the server on one CPU, the client on the other (bench.common.placement)
    }
    if kind == "quick":
        return dict(full, sizes=[1 * MiB, 64 * MiB], push_reps={1 * MiB: 5, 64 * MiB: 1},
                    pull1_reps={1 * MiB: 16, 64 * MiB: 2}, pull8_reps={1 * MiB: 4, 64 * MiB: 1},
                    push4_reps={1 * MiB: 4, 64 * MiB: 1}, small_count=1600, warmup=10, wrk_seconds=1, rounds=1, tls_sizes=[64 * MiB],
                    tls_reps={64 * MiB: 2}, handshakes=400, catalog_repos=(100, 1000, 20), catalog_count=100,
                    idle_count=3200)
    if kind == "smoke":
        return dict(full, sizes=[1 * MiB], push_reps={1 * MiB: 1}, pull1_reps={1 * MiB: 2}, pull8_reps={1 * MiB: 1},
                    push4_reps={1 * MiB: 1}, small_count=16, warmup=1, wrk_seconds=1, rounds=1, tls_sizes=[1 * MiB], tls_reps={1 * MiB: 1},
                    handshakes=8, handshake_clients=2, catalog_repos=(4, 8, 2), catalog_count=8, page=3,
                    idle_conns=20, idle_clients=4, idle_count=40)
    return full


def run_server(server: Server, p: dict, log, modes: tuple[str, ...] = ("base", *MODES)) -> dict:
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
            # every size: its content checked, and the pulls below then read both servers' blobs from
            # the page cache (izreg's O_DIRECT push leaves none there, distribution's unsynced one does)
            get_verify(server, pulled[size])
            if size in p["push4_reps"]:  # 4 clients at once, each its own blobs
                for mode in ("monolithic", "streamed"):
                    reps = p["push4_reps"][size]
                    with PeakRSS(server.pid) as m:
                        res = push_concurrent(server, mode, size, 4, reps)
                    r[f"push4_{mode}_{size}"] = res["bytes"] / res["wall"] / MB
                    r[f"cpu_push4_{mode}_{size}"] = m.cpu / (res["bytes"] / 1e9)
                    log(f"  {server.name}: push x4 {mode:10} {size_label(size):>7}: {r[f'push4_{mode}_{size}']:8.1f} MB/s")

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

        if "base" in modes:
            # 2. pulls ------------------------------------------------------------------------
            for size in p["sizes"]:
                blob = pulled[size]
                path = f"/v2/{server.repo}/blobs/{blob.digest}"
                for clients, reps_key in ((1, "pull1_reps"), (8, "pull8_reps")):
                    reps = p[reps_key][size]
                    place = placement() if p["pin"] and clients == 1 else None
                    with pinned(server.pid, place and place[0]), PeakRSS(server.pid) as m:
                        res = load(server, "GET", path, clients, clients * reps, warmup=0, cpus=place and place[1])
                    if res["bytes"] != size * clients * reps:
                        raise RuntimeError(f"{server.name}: pulled {res['bytes']} bytes, expected {size * clients * reps}")
                    r[f"pull{clients}_{size}"] = res["bytes"] / res["wall"] / MB
                    r[f"cpu_pull{clients}_{size}"] = m.cpu / (res["bytes"] / 1e9)
                    if clients == 8 and size == largest:
                        r["rss_pull8"] = m.peak
                    log(f"  {server.name}: pull x{clients} {size_label(size):>7}: {r[f'pull{clients}_{size}']:8.1f} MB/s"
                        + (f"  peak RSS {m.peak / MiB:.0f} MiB" if clients == 8 and size == largest else ""))

            # the largest blob read from the disk: its file dropped from the page cache first
            blob = pulled[largest]
            if not evict(server.data, blob):
                raise RuntimeError(f"{server.name}: no file of {blob.digest} under {server.data}")
            place = placement() if p["pin"] else None
            with pinned(server.pid, place and place[0]), PeakRSS(server.pid) as m:
                res = load(server, "GET", f"/v2/{server.repo}/blobs/{blob.digest}", 1, 1, warmup=0, cpus=place and place[1])
            r[f"pull1cold_{largest}"] = res["bytes"] / res["wall"] / MB
            r[f"cpu_pull1cold_{largest}"] = m.cpu / (res["bytes"] / 1e9)
            log(f"  {server.name}: pull x1 {size_label(largest):>7}, from the disk: {r[f'pull1cold_{largest}']:8.1f} MB/s")

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
        if "tls" in modes:
            r["tls"] = run_tls_pulls(server, p, pulled, log)
        if "handshake" in modes:
            r["handshake"] = run_handshakes(server, p, log)
        if "idle" in modes:
            r["idle"] = run_idle(server, p, log)
        if "catalog" in modes:  # last: it restarts izreg and leaves thousands of repositories
            r["catalog"] = run_catalog(server, p, log)
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
    from izreg.auth.failures import FailedAuthentications
    from izreg.auth.ratelimit import FailureLimiter
    from izreg.auth.store import AuthStore
    from izreg.service.config import Config
    from izreg.storage.lmdbenv import open_env

    env = open_env(os.path.join(workdir, "auth-bench"), map_size=64 * MiB)
    try:
        store = AuthStore(env)
        clock = [time.time()]
        account = store.create_account(clock[0], "bench")
        _, key = store.create_key(account.account_id, clock[0], "bench")
        config = Config()
        auth = Authenticator(store, now=lambda: clock[0], token_service=config.token_service, failures=FailedAuthentications(
            FailureLimiter(config.auth_failure_limit, config.auth_failure_window)))
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
# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (no 512 MiB blobs), a few minutes")
    ap.add_argument("--smoke", action="store_true", help="a few requests of each mode (checks that it works)")
    ap.add_argument("--modes", default=",".join(("base", *MODES)),
                    help=f"comma-separated: base (push, pull, small requests), {', '.join(MODES)} (default: all of "
                         "these); opt-in: s3 (izreg on moto's S3 vs its disk), cluster (PostgreSQL, nodes, haproxy)")
    ap.add_argument("--soak", default=None, metavar="DURATION",
                    help="also run the soak against izreg for DURATION (30m, 300s, ...): 32 mixed clients, RSS curve")
    ap.add_argument("--soak-warmup", default=None, metavar="DURATION",
                    help="clients run this long before the soak's measured DURATION starts (default 5m; 0 with --smoke)")
    ap.add_argument("--soak-on", choices=("single", "cluster"), default="single",
                    help="the soak's target: single (one izreg on LMDB and its disk, the default) or cluster "
                         "(--soak-nodes izreg nodes on PostgreSQL and moto's S3 behind haproxy, as the cluster mode)")
    ap.add_argument("--soak-nodes", type=int, default=2, metavar="N", help="nodes of --soak-on cluster (default 2)")
    ap.add_argument("--soak-clients", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override one figure of the plan, e.g. --set 'catalog_repos=[1000,10000,20]'; repeatable")
    ap.add_argument("--note", action="append", default=[],
                    help="a line for the report's preface (e.g. the machine's load during the run); repeatable")
    ap.add_argument("--out", default=None, help="write the markdown report here (default: print it)")
    ap.add_argument("--venv", default=os.environ.get("IZREG_VENV", "/tmp/venv"), type=os.path.abspath,  # servers run elsewhere
                    help="virtualenv with twistd and izreg's dependencies (default $IZREG_VENV, else /tmp/venv)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs of each server, in ABBA order; figures are medians (default 3, 1 with --quick/--smoke)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    ap.add_argument("--keycheck", type=int, default=None, help=argparse.SUPPRESS)  # internal: run 5. in the venv
    ap.add_argument("--keycheck-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keycheck is not None:
        print(json.dumps(access_key_check(args.keycheck_dir, args.keycheck)))
        return 0
    shown, skip = [], False
    for a in sys.argv[1:]:  # the command as run, without the local --venv path
        if not skip and not a.startswith("--venv"):
            shown.append(a if a and " " not in a else repr(a))  # --modes "" shown as --modes ''
        skip = a == "--venv"
    args.command = " ".join(["python bench/run.py", *shown])
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    # opt-in: s3 (bench/s3.py): izreg on moto's S3 vs its disk; cluster (bench/cluster.py): PostgreSQL, nodes, haproxy
    unknown = set(modes) - {"base", *MODES, "s3", "cluster"}
    if unknown:
        print(f"unknown mode(s): {', '.join(sorted(unknown))}; known: {', '.join(('base', *MODES, 's3', 'cluster'))}",
              file=sys.stderr)
        return 2
    if args.soak_nodes < 1:
        print("--soak-nodes: at least 1", file=sys.stderr)
        return 2
    soak_seconds = parse_duration(args.soak) if args.soak else None
    soak_warmup = parse_duration(args.soak_warmup or ("0" if args.smoke else "5m"))

    if not os.path.exists(os.path.join(args.venv, "bin", "twistd")):
        print(f"no twistd in {args.venv}/bin; pass --venv", file=sys.stderr)
        return 2
    if not (shutil.which("docker-registry") or os.path.exists("/usr/bin/docker-registry")):
        print("docker-registry not found: apt-get install -y docker-registry", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    p = plan("smoke" if args.smoke else "quick" if args.quick else "full")
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in p:
            print(f"--set: no plan figure {key!r} (one of {', '.join(sorted(p))})", file=sys.stderr)
            return 2
        value = json.loads(value)
        if isinstance(p[key], dict):  # {"67108864": 2} -> {67108864: 2}
            value = {int(k): v for k, v in value.items()}
        elif isinstance(p[key], tuple):
            value = tuple(value)
        p[key] = value
    venv_python = os.path.join(args.venv, "bin", "python")
    tls = "tls" in modes or "handshake" in modes
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="izreg-bench-")
    log(f"working in {workdir}")
    servers: list[Server] = []
    rounds = args.rounds if args.rounds is not None else p["rounds"]
    account = os.urandom(16).hex()  # distribution's repository: <32 hex>/bench, like izreg's
    runs: dict[str, list[dict]] = {"izreg": [], "distribution": []}
    keycheck, soak, s3_result, cluster_result, cluster_soak = None, None, None, None, None
    try:
        for rnd in range(rounds if set(modes) - {"s3", "cluster"} else 0):
            # ABBA order: izreg, distribution, distribution, izreg, ... so neither always goes first
            order = ["izreg", "distribution"] if rnd % 2 == 0 else ["distribution", "izreg"]
            for which in order:
                where = os.path.join(workdir, f"{which}-{rnd}")
                os.makedirs(where)
                server = (Izreg(where, args.venv, tls=tls) if which == "izreg"
                          else Distribution(where, account, tls=tls, python=venv_python))
                servers.append(server)
                log(f"round {rnd + 1}/{rounds}, {which}:")
                # the catalog seeds thousands of repositories: its first round only
                runs[which].append(run_server(server, p, log, modes if rnd < p["catalog_rounds"]
                                              else tuple(m for m in modes if m != "catalog")))
                if not args.keep:
                    shutil.rmtree(server.data, ignore_errors=True)
                os.sync()  # let the page cache drain so the next server starts on a quiet disk
                time.sleep(1)
        if "base" in modes:
            log("access-key check:")
            out = subprocess.run([venv_python, os.path.abspath(__file__), "--keycheck",
                                  str(200 if args.smoke else 2000 if args.quick else 20000), "--keycheck-dir", workdir],
                                 capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"access-key check failed: {out.stderr[-2000:]}")
            keycheck = json.loads(out.stdout)
            log(f"  bearer {keycheck['bearer']:.1f} us, basic {keycheck['basic']:.1f} us")
        if "s3" in modes:
            from bench.s3 import run_s3

            s3_result = run_s3(workdir, args.venv, p, log)
        if "cluster" in modes:
            from bench.cluster import run_cluster

            cluster_result = run_cluster(workdir, args.venv, "smoke" if args.smoke else "quick" if args.quick else "full", log)
        if soak_seconds and args.soak_on == "cluster":
            from bench.cluster import run_cluster_soak

            cluster_soak = run_cluster_soak(workdir, args.venv, soak_seconds, args.soak_clients, log,
                                            sample_every=min(5.0, soak_seconds / 10), warmup=soak_warmup,
                                            count=args.soak_nodes)
        elif soak_seconds:
            where = os.path.join(workdir, "izreg-soak")
            os.makedirs(where)
            server = Izreg(where, args.venv, config=SOAK_CONFIG)
            servers.append(server)
            log(f"soak, izreg, {soak_warmup:.0f} s of warm-up, then {soak_seconds:.0f} s:")
            server.start()
            soak = run_soak(server, soak_seconds, args.soak_clients, log, sample_every=min(5.0, soak_seconds / 10),
                            warmup=soak_warmup)
            server.stop()
            soak["index_stats"] = index_stats_of(server)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sections: list[str] = []
    if runs["izreg"]:
        iz, di = merge(runs["izreg"]), merge(runs["distribution"])
        for mode, section in (("tls", report_tls_pulls), ("handshake", report_handshakes), ("catalog", report_catalog),
                              ("idle", report_idle)):
            if mode in modes:
                sections += section(p, iz[mode], di[mode])
    else:
        # no izreg/distribution rounds (a soak, S3 or cluster run alone): izreg's version all the same
        iz, di = {"version": izreg_version()}, {"version": "–"}
        runs = {"izreg": [{}], "distribution": [{}]}
    if soak is not None:
        sections += report_soak(soak, args.command)
    if cluster_soak is not None:
        from bench.cluster import report_cluster_soak

        sections += report_cluster_soak(cluster_soak, args.command)
    if s3_result is not None:
        from bench.s3 import report_s3

        sections += report_s3(p, s3_result)
    if cluster_result is not None:
        from bench.cluster import report_cluster

        sections += report_cluster(cluster_result)
    preface = [f"- {note}" for note in args.note] + ([""] if args.note else [])
    profile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "PROFILE.md")
    if os.path.exists(profile) and not args.smoke:
        with open(profile) as f:
            sections += [f.read()]
    text = report(args, p, iz, di, keycheck, machine(), venv_python, time.monotonic() - t0, runs, sections, preface)
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
