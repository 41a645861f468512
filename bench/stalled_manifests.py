"""
What N authenticated clients that GET a large manifest and read nothing cost the server.

    python -m bench.stalled_manifests [--connections 100] [--tls] [--send-timeout 60] [--rcvbuf N]

(from a checkout's root, or PYTHONPATH=CHECKOUT to measure another tree). A memory
probe, not a benchmark (docs/benchmark.md, "manifestbudget"). A fresh twistd izreg (this tree) on loopback, a manifest of ~4 MiB
(an OCI image manifest with one large annotation), then N clients (the access key over
plain HTTP, or the device certificate over TLS with --tls) each send a GET of it and read
nothing. Prints the server's VmRSS before, every second after, the peak, how many answers
began 200 / 503 (peeked, not read), and when the server closed them / RSS came back.
"""
import argparse, hashlib, json, os, select, socket, ssl, sys, tempfile, time, base64

sys.path.insert(0, os.environ.get("PYTHONPATH", "."))
from tests.helpers.ociclient import OCIClient, expect  # noqa: E402
from tests.helpers.server import RegistryProcess  # noqa: E402
from tests.helpers.tls import restart_with_tls  # noqa: E402


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--send-timeout", type=int, default=60)
    ap.add_argument("--watch", type=float, default=100.0)
    ap.add_argument("--rcvbuf", type=int, default=0, help="the clients' SO_RCVBUF (0: the system's)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="stalled-manifests-")
    config = os.path.join(base, "izreg.toml")
    with open(config, "w") as f:
        f.write(f"[connections]\nsend_timeout = {args.send_timeout}\nmax_per_address = 0\n")
    reg = RegistryProcess(data_dir=os.path.join(base, "data"), log_path=os.path.join(base, "server.log"), config=config)
    reg.start()
    try:
        port, ctx = reg.port, None
        if args.tls:
            port, paths = restart_with_tls(reg, os.path.join(base, "certs"))
            ctx = ssl.create_default_context(cafile=paths.ca_cert)
            ctx.load_cert_chain(paths.client_cert, paths.client_key)
        client = OCIClient(reg.url, auth=reg.requests_auth)
        repo = f"{reg.account}/big/manifest"
        cfg = b"{}"
        expect(client.push_blob_monolithic(repo, cfg), 201)
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(), "size": len(cfg)},
               "layers": [], "annotations": {"filler": "x" * (4 * 1024 * 1024 - 600)}}
        body = json.dumps(doc).encode()
        expect(client.put_manifest(repo, "v1", body), 201)
        user, password = reg.requests_auth
        auth = "" if args.tls else "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\r\n"
        request = f"GET /v2/{repo}/manifests/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
        time.sleep(2)
        before = rss(reg.pid)
        print(f"manifest {len(body)} bytes; server VmRSS before: {before:.1f} MiB", flush=True)
        socks = []
        t0 = time.monotonic()
        for _ in range(args.connections):
            s = socket.socket()
            if args.rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            s.connect(("127.0.0.1", port))
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            s.sendall(request)
            socks.append(s)
        raw = [s if ctx is None else socket.socket(fileno=os.dup(s.fileno())) for s in socks]
        peak, statuses, closed_at, released_at, last = before, None, None, None, None
        while time.monotonic() - t0 < args.watch:
            time.sleep(1)
            now = rss(reg.pid)
            peak = max(peak, now)
            if statuses is None and ctx is None:
                heads = [s.recv(12, socket.MSG_PEEK) for s in raw]
                statuses = {h: heads.count(h) for h in set(heads)}
            # closed by the server: an error (RST) or EOF pending once the unread data is... (peek what is there)
            # closed by the server (reset, or FIN): the TCP state is no longer ESTABLISHED (1)
            gone = sum(1 for s in raw if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1)
            t = time.monotonic() - t0
            if (now, gone) != last:
                print(f"t={t:5.1f}s VmRSS {now:6.1f} MiB  closed by server: {gone}", flush=True)
                last = (now, gone)
            if gone == len(raw) and closed_at is None:
                closed_at = t
            if released_at is None and t > 3 and now < before + 20:
                released_at = t
            if closed_at is not None and released_at is not None:
                break
        print(f"peak VmRSS {peak:.1f} MiB (+{peak - before:.1f}); answers begun: {statuses}; all closed at "
              f"{closed_at}; RSS within 20 MiB of before at {released_at}", flush=True)
        cut = sum(1 for line in reg.log_lines if "read nothing of" in line)
        print(f"send_timeout warning lines: {cut}; log: {base}/server.log")
        for s in socks:
            s.close()
    finally:
        reg.close()


if __name__ == "__main__":
    main()
