"""
The ``cluster`` mode (#16): izreg with its metadata in PostgreSQL and its
blobs in S3 (moto), one node and two behind haproxy, beside izreg on LMDB:

- manifest GET (req/s, p99) and blob GET (MB/s) on one node and on two
  behind haproxy (round-robin per request), and on one node behind haproxy
  (the proxy's own cost), with the CPU the nodes, haproxy and PostgreSQL
  used per request;
- the per-request cost of the database against LMDB: one node on each
  metadata backend, same blobs store (moto), same requests.

On this 2-core machine the CPU is the ceiling: two nodes share the same two
cores with haproxy, PostgreSQL, moto and the load generator, so the ratio
of two nodes to one says what a node costs, not how a fleet scales.

    python bench/run.py --modes cluster [--quick | --smoke]

And the soak on that setup (L{run_cluster_soak}): bench/modes.py's soak
clients through haproxy to N nodes on PostgreSQL and moto, the RSS curve of
each node, of haproxy, PostgreSQL and moto:

    python bench/run.py --modes "" --soak 30m --soak-warmup 3m --soak-on cluster [--soak-nodes 2]
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

from bench.client import load, push_small, put_manifest
from bench.common import MB, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, REPO_ROOT, Blob, MiB, _status, cpu_seconds, mib
from bench.modes import SOAK_CONFIG, run_soak, soak_curve, soak_method, soak_operations, soak_ratio_line, soak_title
from bench.s3 import CREDENTIALS, Moto
from bench.servers import Izreg, Server

sys.path.insert(0, REPO_ROOT)
from tests.helpers.cluster import HAPROXY, HAProxy  # noqa: E402  (the tests' haproxy config: round-robin per request)
from tests.helpers.postgres import PostgresServer, pg_bin, postgres_available  # noqa: E402  (Debian's postgresql in a temp dir)


def plans(kind: str) -> dict:
    return {"smoke": {"manifest_count": 40, "blob_count": 4, "clients": 4},
            "quick": {"manifest_count": 3000, "blob_count": 64, "clients": 8},
            "full": {"manifest_count": 20000, "blob_count": 256, "clients": 16}}[kind]


class Node(Izreg):
    """One izreg node with a config of its own (metadata and blob backends); C{boot}: another node's credentials."""

    def __init__(self, workdir: str, venv: str, config: str, boot: Izreg | None = None,
                 sealing_key: bytes | None = None) -> None:
        super().__init__(workdir, venv, config=config)
        self.name = "izreg-node"
        os.makedirs(self.data, mode=0o700, exist_ok=True)
        if sealing_key is not None:  # webhook.key: the same on every node of a database (docs/deploy.rst)
            with open(os.open(os.path.join(self.data, "webhook.key"), os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(sealing_key)
        if boot is not None:  # the account lives in the shared database: the node reads its key from here
            with open(os.path.join(self.data, "bootstrap.txt"), "w") as f:
                f.write(f"account={boot.account}\naccess_key={boot.key}\n")


class Balanced(Server):
    """haproxy in front of C{nodes}: the load's target; the nodes' credentials and repository."""

    name = "haproxy"

    def __init__(self, workdir: str, nodes: list[Izreg]) -> None:
        super().__init__(workdir)
        self.nodes = nodes
        self.proxy = HAProxy(workdir, [(f"node{i}", n.port) for i, n in enumerate(nodes, 1)], port=self.port)
        self.headers, self.repo, self.account = nodes[0].headers, nodes[0].repo, nodes[0].account

    def start(self) -> None:
        self.proxy.start()
        self.proc = self.proxy._proc

    def stop(self) -> None:
        self.proxy.stop()


def _postgres_pids(pg: PostgresServer) -> list[int]:
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return [postmaster, *children]


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return out


def _measure(target: Server, nodes: list[Izreg], proxy: Server | None, pg: PostgresServer | None, method: str,
             path: str, clients: int, count: int, headers: dict | None = None) -> dict:
    """Load C{target}; requests/s, MB/s, p99 and CPU seconds per request of the nodes, the proxy and PostgreSQL."""
    groups = {"nodes": [n.pid for n in nodes], "proxy": [proxy.pid] if proxy else [],
              "db": _postgres_pids(pg) if pg else []}
    before = {g: _cpu(p) for g, p in groups.items()}
    res = load(target, method, path, clients, count, warmup=2, extra_headers=headers)
    after = {g: _cpu(p) for g, p in groups.items()}
    out = {"rps": res["rps"], "mbs": res["bytes"] / res["wall"] / MB, "p99": res["p99"]}
    for g in groups:
        used = sum(after[g].get(pid, 0.0) - cpu for pid, cpu in before[g].items())
        out[f"cpu_{g}"] = used / res["requests"]
    return out


def _seed(node: Izreg) -> tuple[str, str]:
    """A small image (config, a 1 MiB layer, a manifest tagged v0): the manifest's and the layer's paths."""
    layer = Blob(f"cluster-{node.port}", 1 * MiB)
    push_small(node, layer.bytes(), layer.digest)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    push_small(node, config, config_digest)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}]},
                          separators=(",", ":")).encode()
    put_manifest(node, "v0", manifest)
    return f"/v2/{node.repo}/manifests/v0", f"/v2/{node.repo}/blobs/{layer.digest}"


def _pg_nodes(workdir: str, venv: str, pg: PostgresServer, config: str, count: int, started: list[Server],
              prefix: str) -> list[Node]:
    """
    A new database (migrated with C{izreg db upgrade}) and C{count} nodes on it with C{config} (more
    TOML after the metadata's), started (added to C{started} as they are); node 1 makes the account.
    """
    dsn = pg.create_database()
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, IZREG_DATABASE_URL=dsn)
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "izreg.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True, timeout=120)
    metadata = f'[metadata]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
    from cryptography.fernet import Fernet

    sealing_key = Fernet.generate_key()
    nodes: list[Node] = []
    for i in range(count):
        where = os.path.join(workdir, f"{prefix}-{i}")
        os.makedirs(where)
        nodes.append(Node(where, venv, metadata + config, boot=nodes[0] if nodes else None, sealing_key=sealing_key))
        started.append(nodes[-1])
        nodes[-1].start()
    return nodes


def _run_setups(workdir: str, venv: str, q: dict, pg: PostgresServer, moto: Moto, log) -> dict:
    r: dict = {}
    s3 = moto.config_toml()
    accept = {"Accept": OCI_MANIFEST}
    started: list[Server] = []

    def run(label: str, target: Server, nodes: list[Izreg], proxy: Server | None, db: PostgresServer | None,
            manifest: str, blob: str) -> None:
        m = _measure(target, nodes, proxy, db, "GET", manifest, q["clients"], q["manifest_count"], accept)
        b = _measure(target, nodes, proxy, db, "GET", blob, q["clients"], q["blob_count"])
        r[label] = {"manifest": m, "blob": b}
        log(f"  {label}: manifest GET {m['rps']:8.0f} req/s, node CPU {m['cpu_nodes'] * 1e6:6.0f} us/req, "
            f"db {m['cpu_db'] * 1e6:5.0f} us/req; blob GET 1 MiB {b['mbs']:7.1f} MB/s")

    try:
        # LMDB, one node (blobs on the same moto: only the metadata differs)
        where = os.path.join(workdir, "cluster-lmdb")
        os.makedirs(where)
        lmdb = Node(where, venv, s3)
        started.append(lmdb)
        lmdb.start()
        paths = _seed(lmdb)
        run("lmdb, 1 node", lmdb, [lmdb], None, None, *paths)
        lmdb.stop()

        nodes = _pg_nodes(workdir, venv, pg, s3, 2, started, "cluster-pg")
        paths = _seed(nodes[0])
        run("postgresql, 1 node", nodes[0], [nodes[0]], None, pg, *paths)
        for label, behind in (("postgresql, 1 node behind haproxy", nodes[:1]),
                              ("postgresql, 2 nodes behind haproxy", nodes)):
            where = os.path.join(workdir, f"haproxy-{len(behind)}")
            os.makedirs(where)
            proxy = Balanced(where, behind)
            started.append(proxy)
            proxy.start()
            run(label, proxy, behind, proxy, pg, *paths)
            proxy.stop()
    finally:
        for s in started:
            s.stop()
    return r


@contextlib.contextmanager
def _backends(workdir: str, venv: str, name: str) -> Iterator[tuple[PostgresServer, Moto]]:
    """PostgreSQL (a new cluster in a temp dir) and moto (a bucket "bench"), started; stopped at the end."""
    if not postgres_available() or not os.access(HAPROXY, os.X_OK):
        raise RuntimeError("the cluster mode needs Debian's postgresql and haproxy (apt-get install -y postgresql haproxy)")
    base = os.path.join(workdir, name)
    os.makedirs(base)
    # not under the work dir: it is 0700 root, closed to the postgres user that owns the cluster when we are root
    pg_base = tempfile.mkdtemp(prefix="izreg-bench-pg-")
    os.chmod(pg_base, 0o755)
    pg = PostgresServer(pg_base)
    moto = Moto(base, os.path.join(venv, "bin", "python"))
    os.environ.update(CREDENTIALS)
    pg.start()
    try:
        moto.start("bench")
        yield pg, moto
    finally:
        moto.stop()
        pg.stop()
        shutil.rmtree(pg_base, ignore_errors=True)


def run_cluster(workdir: str, venv: str, kind: str, log) -> dict:
    """Every setup's figures: {label: {"manifest": {...}, "blob": {...}}}."""
    q = plans(kind)
    with _backends(workdir, venv, "cluster") as (pg, moto):
        log("cluster mode:")
        return {"plan": q, "setups": _run_setups(workdir, venv, q, pg, moto, log)}


def report_cluster(result: dict) -> list[str]:
    q, setups = result["plan"], result["setups"]
    lines = ["## Several nodes: PostgreSQL metadata, S3 blobs (moto), haproxy", "",
             f"{q['clients']} clients (keep-alive to haproxy; haproxy opens a connection to a node per request).",
             "GET manifest by tag and GET blob 1 MiB; CPU per request in microseconds of CPU time, summed over",
             "the nodes, haproxy and PostgreSQL's processes. Everything (nodes, haproxy, PostgreSQL, moto, the",
             "load) shares this machine's two cores: the CPU is the ceiling, and the ratio of two nodes to one",
             "shows what a node costs, not how a fleet scales.", "",
             "| setup | manifest GET req/s | p99 ms | node CPU µs/req | haproxy µs/req | PostgreSQL µs/req "
             "| blob GET MB/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, s in setups.items():
        m, b = s["manifest"], s["blob"]
        lines.append(f"| {label} | {m['rps']:.0f} | {m['p99'] * 1000:.1f} | {m['cpu_nodes'] * 1e6:.0f} "
                     f"| {m['cpu_proxy'] * 1e6:.0f} | {m['cpu_db'] * 1e6:.0f} | {b['mbs']:.1f} |")
    one, two = setups.get("postgresql, 1 node behind haproxy"), setups.get("postgresql, 2 nodes behind haproxy")
    lmdb, pg = setups.get("lmdb, 1 node"), setups.get("postgresql, 1 node")
    lines.append("")
    if one and two:
        lines.append(f"Two nodes / one behind haproxy: manifest GET {two['manifest']['rps'] / one['manifest']['rps']:.2f}x, "
                     f"blob GET {two['blob']['mbs'] / one['blob']['mbs']:.2f}x.")
    if lmdb and pg:
        extra = (pg["manifest"]["cpu_nodes"] + pg["manifest"]["cpu_db"] - lmdb["manifest"]["cpu_nodes"]) * 1e6
        lines.append(f"The database against LMDB, one node: manifest GET {pg['manifest']['rps'] / lmdb['manifest']['rps']:.2f}x "
                     f"the requests/s, {extra:+.0f} µs of CPU per request (node + PostgreSQL).")
    return lines + [""]


# --------------------------------------------------------------------------------------
# The soak on the cluster (bench/run.py --soak DURATION --soak-on cluster)
# --------------------------------------------------------------------------------------


def _process_memory(pid: int):
    """A L{run_soak} C{watch} function: one process's VmRSS and RssAnon."""
    return lambda: (_status(pid, "VmRSS"), _status(pid, "RssAnon"))


def _postgres_memory(pg: PostgresServer):
    """
    A L{run_soak} C{watch} function: PostgreSQL's processes (the postmaster and its backends) summed,
    PSS (the shared buffers counted once, not once per backend that touched them) and RssAnon.
    """
    def measure() -> tuple[int, int]:
        pss = anon = 0
        for pid in _postgres_pids(pg):
            try:
                pss += _status(pid, "Pss", "smaps_rollup")
                anon += _status(pid, "RssAnon")
            except OSError:  # a backend that ended meanwhile
                continue
        return pss, anon
    return measure


def _served(node: Izreg) -> int:
    """Registry requests (/v2/ routes; not haproxy's /healthz checks) in the node's access log, rotated files too."""
    n = 0
    for path in glob.glob(glob.escape(node.log_path) + "*"):
        with open(path, errors="replace") as f:
            n += sum(any(f" {method} /v2/" in line for method in ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"))
                     for line in f)
    return n


def _versions(python: str) -> dict[str, str]:
    """PostgreSQL's, moto's and haproxy's versions (C{unknown} if one cannot be had)."""
    def ask(command: list[str], pick) -> str:
        try:
            return pick(subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip())
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    return {"postgresql": ask([pg_bin("postgres") or "postgres", "--version"], lambda out: out.split(")", 1)[1].split()[0]),
            "moto": ask([python, "-c", "import moto; print(moto.__version__)"], lambda out: out.split()[0]),
            "haproxy": ask([HAPROXY, "-v"], lambda out: out.split()[2])}


def run_cluster_soak(workdir: str, venv: str, seconds: float, clients: int, log, sample_every: float = 5.0,
                     warmup: float = 0.0, count: int = 2) -> dict:
    """
    L{run_soak} through haproxy to C{count} nodes on PostgreSQL and moto (the nodes with the soak's
    settings, L{SOAK_CONFIG}): its figures, the memory of each node, PostgreSQL and moto
    (C{watch}; haproxy's is the soak's own, its target's), the requests each node served, the setup.
    """
    with _backends(workdir, venv, "cluster-soak") as (pg, moto):
        started: list[Server] = []
        try:
            nodes = _pg_nodes(workdir, venv, pg, moto.config_toml() + SOAK_CONFIG, count, started, "soak-node")
            where = os.path.join(workdir, "soak-haproxy")
            os.makedirs(where)
            proxy = Balanced(where, nodes)
            started.append(proxy)
            proxy.start()
            watch = {f"node {i}": _process_memory(node.pid) for i, node in enumerate(nodes, 1)}
            watch.update({"PostgreSQL": _postgres_memory(pg), "moto": _process_memory(moto.proc.pid)})
            log(f"soak, {count} izreg nodes on PostgreSQL and moto behind haproxy, {warmup:.0f} s of warm-up, "
                f"then {seconds:.0f} s:")
            soak = run_soak(proxy, seconds, clients, log, sample_every=sample_every, warmup=warmup, watch=watch)
        finally:
            for s in started:
                s.stop()
        soak["served"] = [_served(node) for node in nodes]
        soak["setup"] = dict(_versions(os.path.join(venv, "bin", "python")), nodes=count)
    log(f"  soak: requests served by each node: {', '.join(str(n) for n in soak['served'])}")
    return soak


def report_cluster_soak(soak: dict, command: str) -> list[str]:
    setup, w = soak["setup"], soak["watch"]
    count, pg, moto, haproxy = setup["nodes"], setup["postgresql"], setup["moto"], setup["haproxy"]
    L = [soak_title(soak, f"cluster soak: {count} izreg nodes, PostgreSQL {pg}, S3 on moto {moto}, haproxy {haproxy}"),
         "", soak_method(soak, command), "",
         f"The cluster soak: the same clients, their keep-alive connections to haproxy {haproxy} (`balance roundrobin`, "
         "`option http-server-close`: a new connection to a node per request, so one push's requests land on "
         f"different nodes) in front of {count} `twistd izreg server` nodes, each with the settings above, "
         f"`[metadata] backend = \"postgresql\"` (PostgreSQL {pg}, started by the bench, fsync off) and "
         f"`[storage] backend = \"s3\"` (moto {moto}'s S3 server, one Python process that keeps the objects in memory); "
         "everything on this machine.", "", soak_operations(soak)]
    if soak["errors"]:
        L.append("- errors by kind, whole run: " + ", ".join(f"{kind} {n}" for kind, n in soak["error_kinds"].items())
                 + "; the first: " + "; ".join(f"`{text}`" for text in soak["error_texts"]))
    L.append("- requests served by each node (its access log, the whole run): "
             + ", ".join(f"node {i} {n}" for i, n in enumerate(soak["served"], 1)))
    for i in range(1, count + 1):
        L += soak_ratio_line(w[f"node {i}"], "rss", f"node {i} RSS (VmRSS)")
        L += soak_ratio_line(w[f"node {i}"], "anon", f"node {i} anonymous memory (RssAnon)")
    L += soak_ratio_line(soak, "rss", "haproxy RSS (VmRSS)")
    for name, what in (("PostgreSQL", "PostgreSQL, PSS summed over the postmaster and its backends (the shared "
                                      "buffers counted once)"), ("moto", "moto RSS (VmRSS)")):
        values = [v for v in w[name]["rss"] if v is not None]
        L += soak_ratio_line(w[name], "rss", what)
        if values:
            L[-1] += f"; {values[0] / MiB:.1f} MiB at the first sample, {values[-1] / MiB:.1f} MiB at the last"

    def row(i: int) -> str:
        return " | ".join([*(mib(w[f"node {n}"]["rss"][i]) for n in range(1, count + 1)),
                           mib(soak["samples"][i][1]), mib(w["PostgreSQL"]["rss"][i]), mib(w["moto"]["rss"][i])])

    heads = [f"node {n} RSS MiB" for n in range(1, count + 1)] + ["haproxy RSS MiB", "PostgreSQL PSS MiB", "moto RSS MiB"]
    return L + soak_curve(soak, heads, row)
