"""Client side: pushes with http.client, and load from forked processes on raw keep-alive sockets."""


import hashlib
import http.client
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import subprocess
import time

from bench.common import OCI_MANIFEST, PATCH_CHUNK, REQUEST_TIMEOUT, SEND_BLOCK, Blob
from bench.servers import Server


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


def start_upload(conn, server: Server, repo: str | None = None) -> str:
    """POST an upload session (to C{repo}, the server's bench repository by default): its URL."""
    resp = _request(conn, "POST", f"/v2/{repo or server.repo}/blobs/uploads/", server.headers, length=0)
    _check(resp, (202,), "POST upload")
    return _location(server, resp)


def put_blob(conn, server: Server, data: bytes, digest: str, repo: str | None = None) -> None:
    """A small blob: POST, then PUT ?digest= with the body."""
    url = _with_query(start_upload(conn, server, repo), f"digest={digest}")
    resp = _request(conn, "PUT", url, dict(server.headers, **{"Content-Type": "application/octet-stream"}),
                    [data], length=len(data))
    _check(resp, (201,), "PUT small blob")


def push_monolithic(server: Server, blob: Blob) -> float:
    """POST, then PUT ?digest= with the whole body; seconds."""
    conn = server.conn()
    try:
        t0 = time.perf_counter()
        url = _with_query(start_upload(conn, server), f"digest={blob.digest}")
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
        url = start_upload(conn, server)
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
        put_blob(conn, server, data, digest)
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

    def __init__(self, host: str, port: int, tls: dict | None = None, context: ssl.SSLContext | None = None,
                 session=None, bufsize: int = SEND_BLOCK) -> None:
        self.sock = socket.create_connection((host, port), timeout=REQUEST_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None or context is not None:
            context = context or tls_context(tls)
            self.sock = context.wrap_socket(self.sock, server_hostname=host, session=session)
        self.buf = bytearray(bufsize)
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
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    client = RawClient(spec["host"], spec["port"], spec.get("tls"))
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


def tls_context(tls: dict) -> ssl.SSLContext:
    """A client context from C{{"ca": PEM, "cert": PEM or None, "key": PEM or None}}."""
    ctx = ssl.create_default_context(cafile=tls["ca"])
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls["key"])
    return ctx


def negotiated(server: Server, port: int | None = None, tls: dict | None = None) -> str:
    """The TLS version and suite the benchmark's client gets from C{server} (one connection), as C{"TLSv1.3 TLS_AES_128_GCM_SHA256"}."""
    ctx = tls_context(tls or server.tls_client)
    with socket.create_connection(("127.0.0.1", port or server.tls_port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            return f"{conn.version()} {conn.cipher()[0]}"


def _guarded(target, spec: dict, barrier, results) -> None:
    """Run one worker; report its error instead of hanging the parent."""
    try:
        target(spec, barrier, results)
    except BaseException as e:
        try:
            barrier.abort()
        except Exception:
            pass
        results.put({"error": f"{type(e).__name__}: {e}"})


def run_workers(target, specs: list[dict], timeout: float = 600) -> list[dict]:
    """
    Run C{target(spec, barrier, results)} in one forked process per spec, all
    released together by the barrier; their result dicts (raise on an error).
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(specs) + 1)
    results = ctx.Queue()
    procs = []
    for spec in specs:
        p = ctx.Process(target=_guarded, args=(target, spec, barrier, results), daemon=True)
        p.start()
        procs.append(p)
    try:
        barrier.wait(120)
    except Exception:
        pass
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < len(specs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError("workers timed out")
        got.append(results.get(timeout=remaining))
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    errors = [r["error"] for r in got if "error" in r]
    if errors:
        raise RuntimeError(errors[0])
    return got


def summarize(got: list[dict]) -> dict:
    wall = max(r["end"] for r in got) - min(r["start"] for r in got)
    lat = sorted(x for r in got for x in r["lat"])
    return {
        "wall": wall,
        "requests": len(lat),
        "bytes": sum(r.get("bytes", 0) for r in got),
        "rps": len(lat) / wall,
        "p50": lat[len(lat) // 2],
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def load(server: Server, method: str, path: str, clients: int, count: int, warmup: int,
         extra_headers: dict[str, str] | None = None, tls: bool = False, cpus: set[int] | None = None) -> dict:
    """
    C{clients} processes share C{count} requests (keep-alive); aggregate figures.
    With C{tls}, over the server's TLS listener (izreg: as a device, by its certificate).
    With C{cpus}, the client processes run on those CPUs only.
    """
    headers = dict(server.tls_headers if tls else server.headers, **(extra_headers or {}))
    per = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    specs = [{"host": server.host, "port": server.tls_port if tls else server.port, "method": method,
              "path": path, "headers": headers, "count": n, "warmup": warmup,
              "tls": server.tls_client if tls else None, "cpus": cpus} for n in per]
    try:
        return summarize(run_workers(_worker, specs))
    except RuntimeError as e:
        raise RuntimeError(f"load {method} {path}: {e}") from None


def _handshake_worker(spec: dict, barrier, results) -> None:
    """C{count} times: a new TLS connection, one small request, close (resuming the first session if asked)."""
    raw = _raw_request("GET", spec["host"], spec["port"], spec["path"], dict(spec["headers"], Connection="close"))
    session, resumed = None, 0
    ctx = tls_context(spec["tls"])
    barrier.wait(60)
    lat = []
    clock = time.perf_counter
    t_start = clock()
    for _ in range(spec["count"]):
        t0 = clock()
        client = RawClient(spec["host"], spec["port"], context=ctx, session=session)
        status, _ = client.request(raw, False)
        resumed += client.sock.session_reused
        if spec["resume"] and session is None:
            session = client.sock.session
        client.close()
        lat.append(clock() - t0)
        if status != 200:
            raise RuntimeError(f"GET {spec['path']}: HTTP {status}")
    results.put({"start": t_start, "end": clock(), "lat": lat, "resumed": resumed})


def handshakes(server: Server, path: str, clients: int, count: int, resume: bool, port: int | None = None,
               tls: dict | None = None) -> dict:
    """
    New TLS connections per second (one small GET each) from C{clients}
    processes, to the server's TLS listener (or C{port}, the client's
    certificates C{tls}).
    """
    per = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    specs = [{"host": server.host, "port": port or server.tls_port, "path": path, "headers": server.tls_headers,
              "count": n, "tls": tls or server.tls_client, "resume": resume} for n in per]
    got = run_workers(_handshake_worker, specs)
    out = summarize(got)
    out["resumed"] = sum(r["resumed"] for r in got)
    return out


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



def _push_worker(spec: dict, barrier, results) -> None:
    """Push C{count} new blobs of C{size} one after the other (after the barrier); timings."""
    fn = push_monolithic if spec["mode"] == "monolithic" else push_streamed
    blobs = [Blob(f"{spec['label']}-{i}", spec["size"]) for i in range(spec["count"])]
    barrier.wait(120)
    clock = time.perf_counter
    t_start = clock()
    lat = [fn(spec["server"], blob) for blob in blobs]
    results.put({"start": t_start, "end": clock(), "lat": lat, "bytes": spec["size"] * len(blobs)})


def push_concurrent(server: Server, mode: str, size: int, clients: int, count: int) -> dict:
    """C{clients} processes push C{count} new blobs each (C{mode}: monolithic or streamed): aggregate figures."""
    specs = [{"server": server, "mode": mode, "size": size, "count": count,
              "label": f"{server.name}-{mode}-{size}-c{i}"} for i in range(clients)]
    return summarize(run_workers(_push_worker, specs))
