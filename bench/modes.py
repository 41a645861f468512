"""
The benchmark's extra modes, each a C{run_*} function (figures as a dict)
and a C{report_*} function (markdown lines, izreg beside distribution):

- TLS blob pulls (izreg: the client presents a device certificate) beside
  the same pulls over plain HTTP;
- TLS handshakes per second (new connection, one small GET, close), full
  and resumed from a session ticket;
- C{_catalog} and tags-list pages at 1,000 and 10,000 repositories of 20
  tags each (page cost independent of the number of repositories?);
- manifest GET latency of 32 clients with and without 1,000 idle
  keep-alive connections open;
- the soak (L{run_soak}): 32 mixed clients for a duration; RSS over time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from typing import Callable

from bench.client import (
    RawClient,
    _check,
    _raw_request,
    _request,
    handshakes,
    load,
    negotiated,
    push_monolithic,
    push_small,
    put_blob,
    put_manifest,
    run_workers,
)
from bench.common import (
    MB, OCI_MANIFEST, REPO_ROOT, Blob, MiB, PeakRSS, _status, cpu_seconds, mib, pinned, placement, size_label,
)
from bench.servers import Izreg, Server

OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def _ratio(a, b) -> str:
    return "–" if a is None or b is None or not b else f"{a / b:.2f}"


# --------------------------------------------------------------------------------------
# TLS pulls
# --------------------------------------------------------------------------------------


def run_tls_pulls(server: Server, p: dict, blobs: dict, log) -> dict:
    """GET the pushed blobs over TLS and over plain HTTP, 1 and 4 clients: MB/s and server CPU s/GB."""
    r: dict = {"cipher": negotiated(server)}
    log(f"  {server.name}: TLS pulls over {r['cipher']}")
    for size in p["tls_sizes"]:
        blob = blobs.get(size)
        if blob is None:  # a size the base run did not push
            blob = blobs[size] = Blob(f"{server.name}-tls-{size}", size)
            push_monolithic(server, blob)
        path = f"/v2/{server.repo}/blobs/{blob.digest}"
        for clients in (1, 4):
            reps = p["tls_reps"][size]
            place = placement() if p.get("pin") and clients == 1 else None  # as the base run's one-client pulls
            for kind, tls in (("tls", True), ("plain", False)):
                pid = server.tls_pid if tls else server.pid
                with pinned(pid, place and place[0]), PeakRSS(pid) as m:
                    res = load(server, "GET", path, clients, clients * reps, warmup=0, tls=tls,
                               cpus=place and place[1])
                if res["bytes"] != size * clients * reps:
                    raise RuntimeError(f"{server.name}: {kind} pull gave {res['bytes']} bytes")
                r[f"{kind}{clients}_{size}"] = res["bytes"] / res["wall"] / MB
                r[f"cpu_{kind}{clients}_{size}"] = m.cpu / (res["bytes"] / 1e9)
                log(f"  {server.name}: {kind:5} pull x{clients} {size_label(size):>7}: "
                    f"{r[f'{kind}{clients}_{size}']:8.1f} MB/s, server CPU {r[f'cpu_{kind}{clients}_{size}']:.2f} s/GB")
    return r


def report_tls_pulls(p: dict, iz: dict, di: dict) -> list[str]:
    L = ["## TLS pulls (GET blob over HTTPS, aggregate)", "",
         "izreg's client presents a device certificate (device CA on izreg's TLS listener); distribution has a "
         "server certificate only (it cannot tie a client certificate to an account). Negotiated: izreg "
         f"{iz.get('cipher', '?')}, distribution {di.get('cipher', '?')}; the client is Python's ssl module in forked "
         "processes, one keep-alive connection each. "
         "The plain rows are the same GETs over plain HTTP in the same run."
         + (" The one-client rows run the server on one CPU and the client on the other, as in the pull table."
            if p.get("pin") else ""), "",
         "| blob, clients | izreg TLS MB/s | distribution TLS MB/s | ratio | izreg plain MB/s | distribution plain MB/s "
         "| plain ratio | izreg TLS / izreg plain | izreg TLS CPU s/GB | distribution TLS CPU s/GB |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in p["tls_sizes"]:
        for clients in (1, 4):
            k = f"{clients}_{size}"
            L.append(f"| {size_label(size)}, {clients} (×{p['tls_reps'][size]} each) | {iz[f'tls{k}']:.0f} | "
                     f"{di[f'tls{k}']:.0f} | {_ratio(iz[f'tls{k}'], di[f'tls{k}'])} | {iz[f'plain{k}']:.0f} | "
                     f"{di[f'plain{k}']:.0f} | {_ratio(iz[f'plain{k}'], di[f'plain{k}'])} | "
                     f"{_ratio(iz[f'tls{k}'], iz[f'plain{k}'])} | {iz[f'cpu_tls{k}']:.2f} | {di[f'cpu_tls{k}']:.2f} |")
    return L + [""]


# --------------------------------------------------------------------------------------
# TLS handshakes
# --------------------------------------------------------------------------------------


def run_handshakes(server: Server, p: dict, log) -> dict:
    """
    Full and resumed handshakes on the TLS listener; on distribution also on
    its listener that verifies client certificates (C{_mtls} figures; izreg's
    one listener always does).
    """
    path = f"/v2/{server.repo}/tags/list"
    r = {}
    listeners = [("", server.tls_pid, None, None)]
    if getattr(server, "mtls_port", None):
        listeners.append(("_mtls", server.mtls_pid, server.mtls_port, server.mtls_client))
    for suffix, pid, port, tls in listeners:
        for kind, resume in (("full", False), ("resumed", True)):
            key = f"hs_{kind}{suffix}"
            with PeakRSS(pid) as m:
                res = handshakes(server, path, p["handshake_clients"], p["handshakes"], resume, port, tls)
            r[key] = res["rps"]
            r[f"{key}_cpu_ms"] = m.cpu / res["requests"] * 1e3
            r[f"{key}_p99"] = res["p99"]
            r[f"{key}_resumed"] = res["resumed"] / res["requests"]
            log(f"  {server.name}: handshakes {kind:7}{' (client certificate)' if suffix else ''}: "
                f"{res['rps']:7.0f}/s, p99 {res['p99'] * 1e3:.1f} ms, server CPU {r[f'{key}_cpu_ms']:.2f} ms each, "
                f"{res['resumed']} of {res['requests']} resumed")
    return r


def report_handshakes(p: dict, iz: dict, di: dict) -> list[str]:
    L = [f"## TLS handshakes ({p['handshakes']} connections from {p['handshake_clients']} processes: "
         "connect, handshake, GET tags/list with `Connection: close`, close)", "",
         "izreg: the client presents its device certificate (ECDSA P-256, from `izreg dev-certs`), which "
         "izreg verifies against the device CA and checks (revocation, subject) on the request. distribution: "
         "two listeners, one that asks for no client certificate (the first rows) and one that requests and "
         "verifies one against the same kind of device CA (`http.tls.clientcas`; *client certificate* rows: "
         "like for like; izreg's figures are the same in both). *Resumed*: every connection after a process's "
         "first offers that first session's ticket.",
         "Server CPU = the serving process's user + system time per connection (handshake and request).",
         "", "| handshake | izreg /s | distribution /s | ratio | izreg p99 ms | distribution p99 ms | "
         "izreg server CPU ms | distribution server CPU ms | izreg resumed | distribution resumed |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for suffix, label in (("", ""), ("_mtls", ", distribution with a client certificate")):
        for kind in ("full", "resumed"):
            a, b = f"hs_{kind}", f"hs_{kind}{suffix}"
            if b not in di:
                continue
            L.append(f"| {kind}{label} | {iz[a]:.0f} | {di[b]:.0f} | {_ratio(iz[a], di[b])} | "
                     f"{iz[f'{a}_p99'] * 1e3:.1f} | {di[f'{b}_p99'] * 1e3:.1f} | "
                     f"{iz[f'{a}_cpu_ms']:.2f} | {di[f'{b}_cpu_ms']:.2f} | "
                     f"{iz[f'{a}_resumed']:.0%} | {di[f'{b}_resumed']:.0%} |")
    return L + [""]


# --------------------------------------------------------------------------------------
# 10,000 repositories: _catalog and tags/list
# --------------------------------------------------------------------------------------


def _repo_name(account: str, i: int) -> str:
    return f"{account}/cat/r{i:05d}"


def _template(server: Server, account: str, tags: int) -> None:
    """The first repository over HTTP: an empty config, one small layer, one manifest under C{tags} tags."""
    repo = _repo_name(account, 0)
    saved, server.repo = server.repo, repo
    try:
        layer = b"izreg bench layer\n"
        blobs = [(b"{}", OCI_EMPTY), (layer, "application/vnd.oci.image.layer.v1.tar")]
        descriptors = []
        for data, media in blobs:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            push_small(server, data, digest)
            descriptors.append({"mediaType": media, "digest": digest, "size": len(data)})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptors[0],
                               "layers": descriptors[1:]}, separators=(",", ":")).encode()
        for t in range(tags):
            put_manifest(server, f"t{t:02d}", manifest)
    finally:
        server.repo = saved


def seed_izreg(data_dir: str, template: str, first: int, last: int, tags: int, account: str) -> None:
    """
    (In the venv, the server stopped.) Repositories C{first}..C{last - 1} as
    copies of C{template}, through izreg's own index code (mount, put
    manifest per tag) on an LMDB environment opened without fsync per
    transaction (one sync at the end): seeding, not the measured path.
    """
    from izreg.core.digest import Digest
    from izreg.service.config import Config
    from izreg.storage.lmdbenv import open_env
    from izreg.storage.lmdbindex import Index

    env = open_env(data_dir, Config.lmdb_map_size, sync=False)
    index = Index(env)
    digest = index.resolve_tag(template, "t00")
    meta, data = index.get_manifest(template, digest)
    doc = json.loads(data)
    blobs = [(d["digest"], d["size"]) for d in [doc["config"], *doc["layers"]]]
    now = time.time()
    for i in range(first, last):
        name = _repo_name(account, i)
        for blob, _ in blobs:
            if not index.mount_blob(name, Digest.parse(blob), [template], now):
                raise RuntimeError(f"cannot mount {blob} into {name}")
        for t in range(tags):
            index.put_manifest(name, digest, meta, data, blobs, [], f"t{t:02d}", None, now)
    env.sync(True)
    env.close()


def seed_distribution(data_dir: str, account: str, first: int, last: int) -> None:
    """Repositories C{first}..C{last - 1} as hard-linked copies of the template's directory tree."""
    base = os.path.join(data_dir, "docker", "registry", "v2", "repositories")
    template = os.path.join(base, _repo_name(account, 0))
    dirs, files = [], []
    for root, _, names in os.walk(template):
        rel = os.path.relpath(root, template)
        dirs.append(rel)
        files += [os.path.join(rel, n) for n in names]
    for i in range(first, last):
        target = os.path.join(base, _repo_name(account, i))
        for d in dirs:
            os.makedirs(os.path.join(target, d), exist_ok=True)
        for f in files:
            os.link(os.path.join(template, f), os.path.join(target, f))


def _in_venv(server: Izreg, *args: str) -> str:
    """C{python -m bench.modes ARGS} in izreg's venv (its lmdb, its izreg): the output."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([server.python, "-m", "bench.modes", *args], env=env, cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True, timeout=3600).stdout


def index_stats_of(server: Izreg) -> dict:
    """The stopped izreg's index: entries and MB per named database (L{index_stats})."""
    return json.loads(_in_venv(server, "index-stats", os.path.join(server.data, "index")))


def _seed(server: Server, first: int, last: int, tags: int, log) -> None:
    t0 = time.monotonic()
    if isinstance(server, Izreg):
        server.stop()
        _in_venv(server, "seed-izreg", server.data, _repo_name(server.account, 0), str(first), str(last), str(tags),
                 server.account)
        server.start()
    else:
        seed_distribution(server.data, server.account, first, last)
    log(f"  {server.name}: seeded repositories {first}..{last - 1} in {time.monotonic() - t0:.0f} s")


def run_catalog(server: Server, p: dict, log) -> dict:
    small, large, tags = p["catalog_repos"]
    account = server.account
    _template(server, account, tags)
    r: dict = {}
    done = 1
    for repos in (small, large):
        _seed(server, done, repos, tags, log)
        done = repos
        pages = {
            "first": f"/v2/_catalog?n={p['page']}",
            "middle": f"/v2/_catalog?n={p['page']}&last={_repo_name(account, repos // 2)}",
            "tags": f"/v2/{_repo_name(account, repos // 2)}/tags/list",
        }
        for key, path in pages.items():
            count = p["catalog_count"] if key != "tags" else p["catalog_count"] * 4
            cpu0 = cpu_seconds(server.pid)
            res = load(server, "GET", path, 4, count, warmup=2)
            # the server's CPU per request (warm-ups counted in): what a loaded machine disturbs least
            res["cpu_us"] = (cpu_seconds(server.pid) - cpu0) / (count + 4 * 2) * 1e6
            r[f"cat_{key}_{repos}"] = res
            log(f"  {server.name}: {repos} repos, {key:6}: {res['rps']:8.1f} req/s, p50 {res['p50'] * 1e3:7.2f} ms, "
                f"p99 {res['p99'] * 1e3:7.2f} ms, server CPU {res['cpu_us']:.0f} us/req")
    return r


def report_catalog(p: dict, iz: dict, di: dict) -> list[str]:
    small, large, tags = p["catalog_repos"]
    L = [f"## {large:,} repositories × {tags} tags: `_catalog` and tags/list", "",
         f"Pages of n={p['page']}: the first page, a page starting in the middle (`last=`), and one repository's "
         f"tags/list; 4 keep-alive clients ({p['catalog_count']} requests, tags/list ×4). Page cost = p50 latency; "
         "server CPU per request from /proc (warm-ups counted in). "
         "Seeding (not timed): izreg's repositories are copies of a first one pushed over HTTP, written through "
         "izreg's own index code with one fsync at the end; distribution's are hard-linked copies of the first "
         "one's directory tree.", "",
         "| page | repos | izreg req/s | distribution req/s | ratio | izreg p50 / p99 ms | distribution p50 / p99 ms "
         "| izreg server CPU µs/req | distribution server CPU µs/req | CPU ratio |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in ("first", "middle", "tags"):
        for repos in (small, large):
            a, b = iz[f"cat_{key}_{repos}"], di[f"cat_{key}_{repos}"]
            L.append(f"| {key} | {repos:,} | {a['rps']:.0f} | {b['rps']:.0f} | {_ratio(a['rps'], b['rps'])} | "
                     f"{a['p50'] * 1e3:.2f} / {a['p99'] * 1e3:.2f} | {b['p50'] * 1e3:.2f} / {b['p99'] * 1e3:.2f} | "
                     + (f"{a['cpu_us']:.0f} | {b['cpu_us']:.0f} | {_ratio(a['cpu_us'], b['cpu_us'])} |"
                        if "cpu_us" in a and "cpu_us" in b else " | | |"))
    L += ["", f"Page cost at {large:,} / at {small:,} repositories (p50 and server CPU per request; 1.00 = "
          "independent of the count):", "",
          "| page | izreg p50 | distribution p50 | izreg CPU | distribution CPU |", "|---|---:|---:|---:|---:|"]

    def grows(r: dict, key: str, figure: str) -> str:
        big, little = r[f"cat_{key}_{large}"], r[f"cat_{key}_{small}"]
        return _ratio(big.get(figure), little.get(figure))

    for key in ("first", "middle", "tags"):
        L.append(f"| {key} | {grows(iz, key, 'p50')} | {grows(di, key, 'p50')} | {grows(iz, key, 'cpu_us')} | "
                 f"{grows(di, key, 'cpu_us')} |")
    return L + [""]


# --------------------------------------------------------------------------------------
# Idle keep-alive connections
# --------------------------------------------------------------------------------------


def _idle_connections(server: Server, n: int) -> list[RawClient]:
    """C{n} keep-alive connections, each after one GET /v2/, left open and silent."""
    raw = _raw_request("GET", server.host, server.port, "/v2/", server.headers)
    out = []
    for _ in range(n):
        c = RawClient(server.host, server.port, bufsize=4096)
        status, _ = c.request(raw, False)
        if status != 200:
            raise RuntimeError(f"idle connection: GET /v2/ answered {status}")
        out.append(c)
    return out


def run_idle(server: Server, p: dict, log) -> dict:
    path = f"/v2/{server.repo}/manifests/v0"
    extra = {"Accept": OCI_MANIFEST}
    clients, count = p["idle_clients"], p["idle_count"]
    r = {"without": load(server, "GET", path, clients, count, 5, extra)}
    idle = _idle_connections(server, p["idle_conns"])
    try:
        r["with"] = load(server, "GET", path, clients, count, 5, extra)
        # every idle connection is still served afterwards
        raw = _raw_request("GET", server.host, server.port, "/v2/", server.headers)
        r["idle_ok"] = sum(c.request(raw, False)[0] == 200 for c in idle)
    finally:
        for c in idle:
            c.close()
    for key in ("without", "with"):
        log(f"  {server.name}: manifest GET x{clients} {key:7} {p['idle_conns']} idle: {r[key]['rps']:7.0f} req/s, "
            f"p99 {r[key]['p99'] * 1e3:.2f} ms")
    log(f"  {server.name}: {r['idle_ok']} of {p['idle_conns']} idle connections answered afterwards")
    return r


def report_idle(p: dict, iz: dict, di: dict) -> list[str]:
    n = p["idle_conns"]
    L = [f"## {n:,} idle keep-alive connections while {p['idle_clients']} clients GET a manifest", "",
         f"{p['idle_count']} manifest GETs by tag from {p['idle_clients']} keep-alive client processes, without and "
         f"with {n:,} other connections open (each after one GET /v2/, then silent); afterwards each idle "
         "connection sends one more request.", "",
         "| | izreg req/s | izreg p50 / p99 ms | distribution req/s | distribution p50 / p99 ms |",
         "|---|---:|---:|---:|---:|"]
    for key in ("without", "with"):
        a, b = iz[key], di[key]
        L.append(f"| {key} idle connections | {a['rps']:.0f} | {a['p50'] * 1e3:.2f} / {a['p99'] * 1e3:.2f} | "
                 f"{b['rps']:.0f} | {b['p50'] * 1e3:.2f} / {b['p99'] * 1e3:.2f} |")
    L += ["", f"p99 with / without: izreg {_ratio(iz['with']['p99'], iz['without']['p99'])}, distribution "
          f"{_ratio(di['with']['p99'], di['without']['p99'])}; idle connections still served afterwards: "
          f"izreg {iz['idle_ok']:.0f} of {n}, distribution {di['idle_ok']:.0f} of {n}.", ""]
    return L


# --------------------------------------------------------------------------------------
# Soak
# --------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """C{30m}, C{90s}, C{1h}, or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


#: live images (tags) per soak client at most: pushes beyond it become deletes
SOAK_LIVE_TAGS = 16

#: error texts kept per soak client (the report's first few)
SOAK_ERROR_TEXTS = 3

#: the soak's izreg: a garbage-collection sweep every minute for layers unreferenced for a minute, so
#: the deleted images' blobs go too (the default sweeps hourly after an hour's grace); and an audit-log
#: retention, as a registry in production sets one: the soak writes ~50 records a second (one per push
#: and delete), so a bound by count, scaled to a 30-minute run, is reached in its first minutes
SOAK_AUDIT_ENTRIES = 10_000
SOAK_CONFIG = f"""\
[gc]
interval = 60
grace = 60
[audit]
max_entries = {SOAK_AUDIT_ENTRIES}
"""


def _mapped_rss(pid: int, suffix: str) -> int:
    """Resident bytes of C{pid}'s mappings of files whose path ends with C{suffix} (/proc/PID/smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(suffix)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def index_stats(path: str) -> dict:
    """(In the venv, the server stopped.) Entries and MB in each named database of the LMDB index at C{path}."""
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False, max_dbs=256)
    try:
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        out = {}
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin() as txn:
                st = txn.stat(db)
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            if st["entries"]:
                out[name.decode()] = {"entries": st["entries"], "mb": pages * st["psize"] / MB}
        return out
    finally:
        env.close()


def _soak_worker(spec: dict, barrier, results) -> None:
    """Mixed operations on one repository until the deadline: push, pull, tags, delete. Counts and errors."""
    rng = random.Random(spec["seed"])
    server = spec["server"]
    repo = f"{server.account}/soak/c{spec['index']}"
    ops = {"push": 0, "pull": 0, "tags": 0, "delete": 0}
    errors, first_error = 0, None
    kinds: dict[str, int] = {}  # errors by operation and exception class
    texts: list[str] = []  # the first few errors' texts
    pushed: list[tuple[str, str, str]] = []  # (tag, manifest digest, layer digest)
    barrier.wait(60)
    t_start = time.perf_counter()
    conn = server.conn()
    n = 0
    cap = spec.get("live", SOAK_LIVE_TAGS)
    warm: dict | None = None  # the counts when the warm-up ended
    while time.time() < spec["deadline"]:
        if warm is None and time.time() >= spec["measured_from"]:
            warm = {"ops": dict(ops), "errors": errors}
        # as many deletes as pushes (2:3:1:2), at most C{cap} live images per client: the data set stays
        # steady, so the server's memory shows leaks, not the data it was asked to keep
        op = rng.choice(("push", "push", "pull", "pull", "pull", "tags", "delete", "delete")) if pushed else "push"
        if op == "push" and len(pushed) >= cap:
            op = "delete"
        try:
            if op == "push":
                n += 1
                layer = os.urandom(rng.randint(1024, 64 * 1024))
                layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
                # as docker and skopeo do, HEAD the config first and upload it if it is not there: the
                # collector drops the repository's link to it once none of its manifests has used it for
                # the grace period (the client deleted all its images), and a HEAD holds it for one
                resp = _request(conn, "HEAD", f"/v2/{repo}/blobs/{spec['config']['digest']}", server.headers)
                _check(resp, (200, 404), "HEAD config")
                if resp.status == 404:
                    put_blob(conn, server, spec["config_data"], spec["config"]["digest"], repo)
                put_blob(conn, server, layer, layer_digest, repo)
                manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                       "config": spec["config"],
                                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                                   "digest": layer_digest, "size": len(layer)}]}).encode()
                tag = f"t{n}"
                resp = _request(conn, "PUT", f"/v2/{repo}/manifests/{tag}",
                                dict(server.headers, **{"Content-Type": OCI_MANIFEST}), [manifest], length=len(manifest))
                _check(resp, (201,), "PUT manifest")
                pushed.append((tag, "sha256:" + hashlib.sha256(manifest).hexdigest(), layer_digest))
            elif op == "pull":
                tag, _, layer_digest = rng.choice(pushed)
                resp = _request(conn, "GET", f"/v2/{repo}/manifests/{tag}", dict(server.headers, Accept=OCI_MANIFEST))
                _check(resp, (200,), "GET manifest")
                resp = _request(conn, "GET", f"/v2/{repo}/blobs/{layer_digest}", server.headers)
                if hashlib.sha256(_check(resp, (200,), "GET blob")).hexdigest() != layer_digest[7:]:
                    raise RuntimeError("GET blob: wrong content")
            elif op == "tags":
                resp = _request(conn, "GET", f"/v2/{repo}/tags/list", server.headers)
                _check(resp, (200,), "GET tags")
            else:
                tag, digest, _ = pushed.pop(rng.randrange(len(pushed)))
                resp = _request(conn, "DELETE", f"/v2/{repo}/manifests/{digest}", server.headers)
                _check(resp, (202,), "DELETE manifest")
            ops[op] += 1
        except Exception as e:
            errors += 1
            kind = f"{op}: {type(e).__name__}"
            kinds[kind] = kinds.get(kind, 0) + 1
            if len(texts) < SOAK_ERROR_TEXTS:
                texts.append(f"{kind}: {e}")
            first_error = first_error or texts[0]
            conn.close()
            conn = server.conn()
    conn.close()
    warm = warm or {"ops": dict(ops), "errors": errors}
    results.put({"start": t_start, "end": time.perf_counter(), "ops": ops, "errors": errors,
                 "first_error": first_error, "kinds": kinds, "texts": texts, "warm": warm})


def run_soak(server: Server, seconds: float, clients: int, log, sample_every: float = 5.0,
             warmup: float = 0.0, watch: dict[str, Callable[[], tuple[int, int]]] | None = None) -> dict:
    """
    C{clients} mixed clients for C{warmup} then C{seconds} more; RSS sampled every C{sample_every} s.
    The first and last windows are taken in the measured C{seconds} (the data set steady: every
    client at its live images, the audit log at its bound, sweeps done), and over the whole run too.
    C{watch}: more processes sampled with the server (a name: a function giving their resident and
    anonymous bytes; raising C{OSError} when gone), with the same windows: C{out["watch"][name]}.
    """
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    repos = [f"{server.account}/soak/c{i}" for i in range(clients)]
    saved = server.repo
    try:
        for repo in repos:  # every client's repository has the (empty) config blob
            server.repo = repo
            push_small(server, config, config_digest)
    finally:
        server.repo = saved
    samples: list[tuple[float, int]] = []
    anon: list[int] = []  # RssAnon with each sample: the heap, without the mapped LMDB index (RssFile)
    index: list[int] = []  # the LMDB index file's size (data.mdb) with each sample
    other: list[int] = []  # VmRSS less the resident pages of the index's memory map
    data = getattr(server, "data", None)  # haproxy in front of nodes has no data directory, no index
    index_file = os.path.join(data, "index", "data.mdb") if data else None
    watched: dict[str, tuple[list, list]] = {name: ([], []) for name in watch or {}}  # RSS, anonymous
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(sample_every):
            try:
                rss, rss_anon = _status(server.pid, "VmRSS"), _status(server.pid, "RssAnon")
                mapped = _mapped_rss(server.pid, "/index/data.mdb")
                size = os.path.getsize(index_file) if index_file and os.path.exists(index_file) else 0
            except OSError:
                return
            for name, measure in (watch or {}).items():
                try:
                    values = measure()
                except OSError:  # gone: no figure
                    values = (None, None)
                for into, value in zip(watched[name], values):
                    into.append(value)
            samples.append((time.monotonic() - t0, rss))
            anon.append(rss_anon)
            index.append(size)
            other.append(rss - mapped)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    measured_from = time.time() + warmup
    deadline = measured_from + seconds
    specs = [{"server": server, "index": i, "seed": i, "deadline": deadline, "measured_from": measured_from,
              "config_data": config,
              "config": {"mediaType": OCI_EMPTY, "digest": config_digest, "size": len(config)}} for i in range(clients)]
    try:
        got = run_workers(_soak_worker, specs, timeout=warmup + seconds + 300)
    finally:
        stop.set()
        sampler.join(10)
    ops = {k: sum(r["ops"][k] for r in got) for k in got[0]["ops"]}
    warm_ops = {k: sum(r["warm"]["ops"][k] for r in got) for k in got[0]["ops"]}
    errors = sum(r["errors"] for r in got)
    warm_errors = sum(r["warm"]["errors"] for r in got)
    first = next((r["first_error"] for r in got if r["first_error"]), None)
    window = min(300.0, seconds / 5)
    end = warmup + seconds

    def mean(values: list[int | None], start: float, stop: float) -> float | None:
        picked = [v for (t, _), v in zip(samples, values) if start <= t <= stop and v is not None]
        return sum(picked) / len(picked) if picked else None

    def windows(into: dict, series: dict[str, list]) -> dict:
        for name, values in series.items():
            into[f"{name}_first"] = mean(values, warmup, warmup + window)  # the measured part's first window
            into[f"{name}_last"] = mean(values, end - window, float("inf"))
            into[f"{name}_run_first"] = mean(values, 0, window)  # the whole run's, warm-up included
        return into

    rss = [v for _, v in samples]
    kinds: dict[str, int] = {}
    for r in got:
        for kind, n in r["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    out = {"seconds": seconds, "warmup": warmup, "clients": clients, "errors": errors, "first_error": first,
           "ops": {k: ops[k] - warm_ops[k] for k in ops}, "errors_measured": errors - warm_errors, "ops_all": ops,
           "error_kinds": kinds, "error_texts": [text for r in got for text in r["texts"]][:SOAK_ERROR_TEXTS],
           "samples": samples, "anon": anon, "index": index, "other": other, "window": window}
    windows(out, {"rss": rss, "anon": anon, "other": other})
    out["watch"] = {name: windows({"rss": r, "anon": a, "window": window, "warmup": warmup}, {"rss": r, "anon": a})
                    for name, (r, a) in watched.items()}
    sized = [(t, size) for (t, _), size in zip(samples, index)]
    out["index_measured"] = next((size for t, size in sized if t >= warmup), None)
    log(f"  soak: {sum(ops.values())} operations {ops}, {errors} errors{f' (first: {first})' if first else ''}; "
        f"RSS first {window:.0f} s after the {warmup:.0f} s warm-up {mib(out['rss_first'])} MiB, "
        f"last {mib(out['rss_last'])} MiB; first {window:.0f} s of the whole run {mib(out['rss_run_first'])} MiB")
    for name, w in out["watch"].items():
        log(f"  soak: {name}: memory first {window:.0f} s after the warm-up {mib(w['rss_first'])} MiB, "
            f"last {mib(w['rss_last'])} MiB")
    return out


def soak_ratio_line(soak: dict, name: str, what: str) -> list[str]:
    """C{what}: the measured part's first and last windows and their ratio; then the whole run's (warm-up included)."""
    first, last, run_first = (soak.get(f"{name}_{k}") for k in ("first", "last", "run_first"))
    if not (first and last):
        return [f"- (no {what} samples)"]
    w = soak["window"]
    line = (f"- {what}: first {w:.0f} s {first / MiB:.1f} MiB, last {w:.0f} s {last / MiB:.1f} MiB, "
            f"last / first = **{last / first:.3f}**")
    if soak.get("warmup") and run_first:
        line += (f"; over the whole run, warm-up included (its first {w:.0f} s against the same last {w:.0f} s): "
                 f"{run_first / MiB:.1f} → {last / MiB:.1f} MiB, **{last / run_first:.3f}**")
    return [line]


def _span(seconds: float) -> str:
    return f"{seconds / 60:.4g} min" if seconds >= 60 else f"{seconds:.0f} s"


def soak_title(soak: dict, what: str) -> str:
    """The soak section's heading: its clients, duration and warm-up, and C{what} ran."""
    return (f"## Soak: {soak['clients']} mixed clients for {_span(soak['seconds'])}"
            + (f", after a {_span(soak['warmup'])} warm-up" if soak.get("warmup") else "") + f" ({what})")


def soak_method(soak: dict, command: str) -> str:
    """The paragraph that says what the soak's clients do, what the servers keep, and the warm-up."""
    s, warmup = soak["seconds"], soak.get("warmup", 0)
    text = (f"`{command}`: each client pushes (a HEAD of the config, a 1-64 KiB layer and a manifest under a new "
            "tag), pulls (a manifest by tag and its layer, content checked), lists tags and deletes one of its manifests, at random "
            f"(2:3:1:2: as many deletes as pushes; a push beyond {SOAK_LIVE_TAGS} live images deletes instead), on its "
            "own repository, one keep-alive connection each. izreg sweeps garbage every 60 s (grace 60 s), so the "
            "deleted images' layers go too, and keeps the newest "
            f"{SOAK_AUDIT_ENTRIES:,} audit records (`[audit] max_entries`; a record per push and per delete): the "
            "data set stays steady.")
    if warmup:
        text += (f" The clients run {_span(warmup)} before the measured {_span(s)} (the warm-up: every "
                 "client reaches its live images, the audit log its bound, the collector its first sweeps); the "
                 "first and last windows below are the measured part's, and each figure is also given over the "
                 "whole run, warm-up included.")
    return text


def soak_operations(soak: dict) -> str:
    """The line of operations (per kind, per second) and errors, measured and over the whole run."""
    s, warmup = soak["seconds"], soak.get("warmup", 0)
    total = sum(soak["ops"].values())
    every = sum(soak.get("ops_all", soak["ops"]).values())
    return (f"- {total} operations in the measured {_span(s)} "
            f"({', '.join(f'{k} {v}' for k, v in soak['ops'].items())}), {total / s:.0f}/s; "
            f"**{soak.get('errors_measured', soak['errors'])} errors**"
            + (f"; over the whole run, warm-up included: {every} operations, **{soak['errors']} errors**" if warmup else "")
            + (f" (first: {soak['first_error']})" if soak["first_error"] else ""))


def soak_curve(soak: dict, heads: list[str], row: Callable[[int], str]) -> list[str]:
    """
    The samples as a table of about 36 rows: C{heads} the columns after the time, C{row(i)} the
    cells of sample C{i}; the first measured sample marked.
    """
    n, warmup = len(soak["samples"]), soak.get("warmup", 0)
    L = ["", f"| time | {' | '.join(heads)} |", "|---:|" + "---:|" * len(heads)]
    marked = not warmup
    for i in range(0, n, max(1, n // 36)):
        t = soak["samples"][i][0]
        when = f"{t:.0f} s"
        if not marked and t >= warmup:
            when, marked = f"{when} (measured from here)", True
        L.append(f"| {when} | {row(i)} |")
    return L + [""]


def report_soak(soak: dict, command: str) -> list[str]:
    warmup = soak.get("warmup", 0)
    L = [soak_title(soak, "izreg"), "", soak_method(soak, command)]
    L += ["", soak_operations(soak)]
    L += soak_ratio_line(soak, "rss", "server RSS (VmRSS)")
    L += soak_ratio_line(soak, "anon", "of which anonymous memory (RssAnon: the Python heap, without the memory-mapped "
                                   "LMDB index, whose resident pages grow with the data the index holds)")
    L += soak_ratio_line(soak, "other", "RSS less the index's memory map (the resident pages of data.mdb, from "
                                    "/proc/PID/smaps)")
    if soak.get("index"):
        L.append(f"- LMDB index file (data.mdb): {soak['index'][0] / MB:.1f} MB at the first sample, "
                 + (f"{soak['index_measured'] / MB:.1f} MB when the warm-up ended, " if warmup and soak.get("index_measured")
                    else "")
                 + f"{soak['index'][-1] / MB:.1f} MB at the last")
    else:
        L.append("- (no index samples)")
    if soak.get("index_stats"):
        L.append("- in the index at the end (entries, MB): " + ", ".join(
            f"{name} {v['entries']} ({v['mb']:.1f})" for name, v in sorted(soak["index_stats"].items(),
                                                                        key=lambda kv: -kv[1]["mb"])))
    n = len(soak["samples"])
    anon, index, other = (soak.get(k) or [0] * n for k in ("anon", "index", "other"))

    def row(i: int) -> str:
        rss = soak["samples"][i][1]
        return (f"{rss / MiB:.1f} {'#' * int(rss / MiB / 4)} | {anon[i] / MiB:.1f} | {other[i] / MiB:.1f} | "
                f"{index[i] / MB:.1f}")

    return L + soak_curve(soak, ["RSS MiB", "RssAnon MiB", "RSS less the index map MiB", "data.mdb MB"], row)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "index-stats":
        print(json.dumps(index_stats(sys.argv[2])))
    elif sys.argv[1] == "seed-izreg":
        data_dir, template, first, last, tags, account = sys.argv[2:8]
        seed_izreg(data_dir, template, int(first), int(last), int(tags), account)
