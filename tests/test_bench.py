"""
A smoke run of bench/run.py (a few requests of every mode, both servers, a
few seconds of soak): the benchmark still works. It times nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not shutil.which("docker-registry") and not os.environ.get("CI"),
    reason="distribution (apt-get install -y docker-registry) is not installed",
)]


def test_smoke_run_of_every_mode(tmp_path):
    out = tmp_path / "benchmark.md"
    # a relative --venv (docs/benchmark.md: --venv .venv) is relative to where the command runs
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "run.py"), "--smoke", "--venv", os.path.basename(sys.prefix),
         "--soak", "4s", "--soak-warmup", "2s", "--soak-clients", "4", "--note", "smoke run", "--out", str(out)],
        cwd=os.path.dirname(sys.prefix), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    for heading in ("## Push (one client)", "## Pull (GET blob, aggregate)", "## TLS pulls", "## TLS handshakes",
                    "repositories × 2 tags: `_catalog` and tags/list", "idle keep-alive connections",
                    "## Soak: 4 mixed clients", "## Method"):
        assert heading in text, heading
    assert "**0 errors**" in text
    # the suites the two TLS listeners negotiated with the benchmark's client (izreg: AES-128-GCM first)
    assert "Negotiated: izreg TLSv1.3 TLS_AES_128_GCM_SHA256, distribution TLSv1.3 TLS_" in text
    # the largest blob once more from the disk: both servers' files of it found and dropped from the page cache
    assert "| 1 MiB, 1 client, from the disk" in text
    if len(os.sched_getaffinity(0)) > 1:  # the one-client pulls ran pinned, and the report says how
        assert "run the server (every thread) on one CPU and the client on the other" in text
        assert "The one-client rows run the server on one CPU and the client on the other, as in the pull table." in text
    assert "20 of 20 idle connections answered afterwards" in proc.stderr
    # resumption: the second handshake of each client process resumed its session, on both servers
    resumed = [line for line in text.splitlines() if line.startswith("| resumed |")][0]
    assert resumed.rstrip(" |").endswith("75% | 75%"), resumed
    # and against distribution's listener that verifies a client certificate (like izreg's)
    mtls = [line for line in text.splitlines() if line.startswith("| resumed, distribution with a client certificate |")]
    assert mtls and mtls[0].rstrip(" |").endswith("75% | 75%"), mtls
    assert "| full, distribution with a client certificate |" in text
    # the soak: a steady data set, and the memory less the index's mapped pages
    assert "as many deletes as pushes" in text and "RSS less the index's memory map" in text
    # measured after a warm-up, and the figures over the whole run too
    assert "## Soak: 4 mixed clients for 4 s, after a 2 s warm-up (izreg)" in text
    assert "over the whole run, warm-up included" in text and "(measured from here)" in text


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_smoke_run_of_pullstats(tls):
    """bench/pullstats.py: both servers, one GET each, a line per server with its CPU per GB."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "pullstats.py"), "--size", "1", "--count", "1",
         "--rounds", "1", "--venv", sys.prefix, *(["--tls"] if tls else [])],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("1 MiB, 1 GETs by 1 client(s)" + (" over TLS" if tls else ""))
    for name in ("izreg", "distribution"):
        assert any(line.startswith(f"round 1 {name} ") and " GB/s  server " in line and "s/GB" in line
                   for line in lines[1:]), (name, lines)


def _smoke(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """C{bench/run.py --smoke ARGS}, this venv's izreg, in C{tmp_path}: the process (it succeeded) and its report."""
    pytest.importorskip("moto.server")
    out = tmp_path / "benchmark.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "run.py"), "--smoke", *args, "--venv", sys.prefix,
         "--out", str(out)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, out.read_text()


def _cluster(test):
    """The markers of a test that starts PostgreSQL, moto and haproxy (as tests/helpers/cluster.py's)."""
    return pytest.mark.cluster(pytest.mark.postgres(pytest.mark.s3(test)))


@pytest.mark.s3
def test_smoke_run_of_the_s3_mode(tmp_path):
    """izreg over moto's S3 against izreg on disk: the report has the S3 table and says moto is the ceiling."""
    _, text = _smoke(tmp_path, "--modes", "s3")
    assert "## izreg on S3 (moto on loopback) vs izreg on disk" in text
    assert "is the ceiling here, not izreg" in text
    assert "| push streamed 1 MiB |" in text and "| pull x1 1 MiB |" in text
    # no izreg/distribution rounds: the header still names the izreg commit (it said "git –")
    commit = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert f"| izreg | git {commit} (" in text


@_cluster
def test_smoke_run_of_the_cluster_mode(tmp_path):
    """One node on LMDB, on PostgreSQL, and one and two behind haproxy: the report has every row and the ratios."""
    _, text = _smoke(tmp_path, "--modes", "cluster")
    assert "## Several nodes: PostgreSQL metadata, S3 blobs (moto), haproxy" in text
    for row in ("| lmdb, 1 node |", "| postgresql, 1 node |", "| postgresql, 1 node behind haproxy |",
                "| postgresql, 2 nodes behind haproxy |"):
        assert row in text, row
    assert "Two nodes / one behind haproxy: manifest GET" in text
    assert "The database against LMDB, one node" in text


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to place")
def test_pinned_places_every_thread_of_the_server_and_restores_them():
    sys.path.insert(0, REPO_ROOT)
    from bench.common import pinned, placement

    server_cpus, client_cpus = placement()
    assert server_cpus and client_cpus and not server_cpus & client_cpus
    # a process with a second thread already running, as twistd's and distribution's are
    code = "import sys, threading; e = threading.Event(); threading.Thread(target=e.wait).start(); print(flush=True); sys.stdin.read(); e.set()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # both threads exist
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(tids) == 2
        everywhere = os.sched_getaffinity(0)
        with pinned(proc.pid, server_cpus):
            assert [os.sched_getaffinity(t) for t in tids] == [server_cpus] * 2
        assert [os.sched_getaffinity(t) for t in tids] == [everywhere] * 2
        with pinned(proc.pid, None):  # not pinned: left alone
            assert [os.sched_getaffinity(t) for t in tids] == [everywhere] * 2
    finally:
        proc.stdin.close()
        proc.wait(10)


@_cluster
def test_smoke_run_of_the_soak_on_the_cluster(tmp_path):
    """--soak-on cluster: the soak's clients reached both nodes through haproxy, no error, each node's RSS curve."""
    import re

    proc, text = _smoke(tmp_path, "--modes", "", "--soak", "6s", "--soak-warmup", "2s", "--soak-clients", "4",
                        "--soak-on", "cluster")
    print(proc.stderr)  # the figures, with -s
    title = re.search(r"^## Soak: 4 mixed clients for 6 s, after a 2 s warm-up \(cluster soak: 2 izreg nodes, "
                      r"PostgreSQL (\S+), S3 on moto (\S+), haproxy (\S+)\)$", text, re.M)
    assert title, text
    assert "unknown" not in title.groups(), title.group(0)  # every version found
    assert "## Soak: 4 mixed clients for 6 s, after a 2 s warm-up (izreg)" not in text  # not the single-node soak
    operations = re.search(r"^- (\d+) operations in the measured 6 s \(push (\d+), .*\), \d+/s; \*\*0 errors\*\*; "
                           r"over the whole run, warm-up included: (\d+) operations, \*\*0 errors\*\*$", text, re.M)
    assert operations, text
    assert int(operations.group(1)) > 0 and int(operations.group(2)) > 0
    # round-robin per request: each node served a share of the soak's requests (its access log)
    served = re.search(r"^- requests served by each node \(its access log, the whole run\): node 1 (\d+), node 2 (\d+)$",
                       text, re.M)
    assert served, text
    assert all(int(n) > 4 * 3 for n in served.groups()), served.group(0)  # more than the config blobs' pushes
    # each node's RSS over the measured part, its first and last windows and their ratio
    for node in ("node 1", "node 2"):
        assert re.search(rf"^- {node} RSS \(VmRSS\): first 1 s \d+\.\d MiB, last 1 s \d+\.\d MiB, last / first = "
                         rf"\*\*\d\.\d{{3}}\*\*", text, re.M), node
        assert f"- {node} anonymous memory (RssAnon): first" in text
    assert re.search(r"^- PostgreSQL, PSS summed over .*; \d+\.\d MiB at the first sample, \d+\.\d MiB at the last$",
                     text, re.M), text
    assert re.search(r"^- moto RSS \(VmRSS\): .*; \d+\.\d MiB at the first sample, \d+\.\d MiB at the last$", text, re.M)
    assert "- haproxy RSS (VmRSS): first" in text
    assert "| time | node 1 RSS MiB | node 2 RSS MiB | haproxy RSS MiB | PostgreSQL PSS MiB | moto RSS MiB |" in text
    assert "(measured from here)" in text
