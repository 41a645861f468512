"""The two servers under test, started on free loopback ports with fresh data directories."""


import http.client
import os
import shutil
import signal
import socket
import sys
import subprocess
import time

from bench.common import REPO_ROOT, REQUEST_TIMEOUT, START_TIMEOUT, free_port


class Server:
    name = "?"
    proc: subprocess.Popen | None = None

    def __init__(self, workdir: str, tls: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.host = "127.0.0.1"
        self.headers: dict[str, str] = {}
        self.repo = ""
        #: with C{tls}: the TLS listener's port, the headers a TLS client sends and its
        #: certificate files ({"ca", "cert", "key"}: see bench.client.tls_context)
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.tls_headers: dict[str, str] = {}
        self.tls_client: dict | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def tls_pid(self) -> int:
        """The process that serves TLS."""
        return self.pid

    def _wait_port(self, port: int | None = None, proc: subprocess.Popen | None = None) -> None:
        port, proc = port or self.port, proc or self.proc
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection((self.host, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {port} in {START_TIMEOUT}s")

    @staticmethod
    def _stop_process(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        self._stop_process(self.proc)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)


def dev_certs(python: str, directory: str, account: str) -> dict:
    """izreg's development CA, server and device certificates (izreg dev-certs): their paths."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([python, "-m", "izreg.cli", "dev-certs", directory, "--account", account, "--device-id", "bench"],
                   env=env, check=True, capture_output=True, timeout=60)
    return {"ca": os.path.join(directory, "ca.crt"), "cert": os.path.join(directory, "client.cert"),
            "key": os.path.join(directory, "client.key"),
            "server_cert": os.path.join(directory, "server", "server.crt"),
            "server_key": os.path.join(directory, "server", "server.key")}


#: izreg's settings for the benchmark: every client is 127.0.0.1, and the idle mode keeps
#: 1,000 connections open and silent (distribution caps neither)
IZREG_CONFIG = """\
[connections]
max_connections = 0
max_per_address = 0
idle_timeout = 3600
"""


class Izreg(Server):
    name = "izreg"

    def __init__(self, workdir: str, venv: str, tls: bool = False, config: str = "") -> None:
        super().__init__(workdir, tls)
        self.config_text = config  # more of izreg's TOML settings after IZREG_CONFIG's
        self.twistd = os.path.join(venv, "bin", "twistd")
        self.python = os.path.join(venv, "bin", "python")
        self.data = os.path.join(workdir, "izreg-data")
        self.log_path = os.path.join(workdir, "izreg.log")
        self.certs: dict | None = None

    def _command(self) -> list[str]:
        config = os.path.join(self.workdir, "izreg-bench.toml")
        with open(config, "w") as f:
            f.write(IZREG_CONFIG + self.config_text)
        cmd = [self.twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "izreg", "server", "--init", "--config", config,
               "--data-dir", self.data, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        if self.certs is not None:
            cmd += ["--tls-listen", f"tcp:{self.tls_port}:interface=127.0.0.1", "--tls-cert", self.certs["server_cert"],
                    "--tls-key", self.certs["server_key"], "--device-ca", self.certs["ca"]]
        return cmd

    def start(self) -> None:
        """Start (the first time: bootstrap, then with TLS the device certificates of its account and a restart)."""
        self._start()
        if self.tls and self.certs is None:
            self.certs = dev_certs(self.python, os.path.join(self.workdir, "izreg-certs"), self.account)
            self.tls_client = {k: self.certs[k] for k in ("ca", "cert", "key")}  # the device's certificate
            self.stop()
            self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        mark = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = subprocess.Popen(self._command(), env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        boot = os.path.join(self.data, "bootstrap.txt")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"izreg exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with open(self.log_path) as f:
                    f.seek(mark)
                    started = f"starting on {self.port}" in f.read()
            except FileNotFoundError:
                started = False
            if started and os.path.exists(boot):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"izreg did not start in {START_TIMEOUT}s; see {self.log_path}")
        self._wait_port()
        if self.certs is not None:
            self._wait_port(self.tls_port)
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
        return izreg_version()


def izreg_version() -> str:
    """The commit of the tree the izreg servers run (C{git rev-parse} of the checkout bench/ is in)."""
    try:
        return subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


class Distribution(Server):
    """
    distribution serves one listener per process: with C{tls}, a second
    process on the same storage serves HTTPS (a server certificate; no client
    certificates), and a third HTTPS that requests and verifies a client
    certificate (C{http.tls.clientcas}: the device CA, as izreg's TLS listener
    does; C{mtls_port}, C{mtls_client}).
    """

    name = "distribution"

    def __init__(self, workdir: str, account: str, tls: bool = False, python: str = sys.executable) -> None:
        super().__init__(workdir, tls)
        self.data = os.path.join(workdir, "distribution-data")
        self.log_path = os.path.join(workdir, "distribution.log")
        self.repo = f"{account}/bench"
        self.account = account
        self.binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.python = python
        self.tls_proc: subprocess.Popen | None = None
        self.mtls_proc: subprocess.Popen | None = None
        self.mtls_port = free_port() if tls else None
        self.mtls_client: dict | None = None

    def _config(self, path: str, port: int, certs: dict | None, client_certificates: bool = False) -> str:
        with open(path, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.data}\n"
                "  delete:\n    enabled: true\n"
                "  cache:\n    blobdescriptor: inmemory\n"
                f"http:\n  addr: 127.0.0.1:{port}\n"
                + (f"  tls:\n    certificate: {certs['server_cert']}\n    key: {certs['server_key']}\n" if certs else "")
                + (f"    clientcas:\n      - {certs['ca']}\n" if certs and client_certificates else "")
            )
        return path

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        self.logf = open(self.log_path, "ab")
        config = self._config(os.path.join(self.workdir, "distribution.yml"), self.port, None)
        self.proc = subprocess.Popen([self.binary, "serve", config], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        self._wait_port()
        if self.tls:
            certs = dev_certs(self.python, os.path.join(self.workdir, "distribution-certs"), self.account)
            self.tls_client = {"ca": certs["ca"]}
            config = self._config(os.path.join(self.workdir, "distribution-tls.yml"), self.tls_port, certs)
            self.tls_proc = subprocess.Popen([self.binary, "serve", config], cwd=self.workdir,
                                             stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
            self._wait_port(self.tls_port, self.tls_proc)
            self.mtls_client = {k: certs[k] for k in ("ca", "cert", "key")}  # a device certificate of the same CA
            config = self._config(os.path.join(self.workdir, "distribution-mtls.yml"), self.mtls_port, certs, True)
            self.mtls_proc = subprocess.Popen([self.binary, "serve", config], cwd=self.workdir,
                                              stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
            self._wait_port(self.mtls_port, self.mtls_proc)

    @property
    def tls_pid(self) -> int:
        return self.tls_proc.pid

    @property
    def mtls_pid(self) -> int:
        return self.mtls_proc.pid

    def stop(self) -> None:
        self._stop_process(self.mtls_proc)
        self._stop_process(self.tls_proc)
        super().stop()
        if getattr(self, "logf", None):
            self.logf.close()

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
            return out.strip().split()[-1]
        except Exception:
            return "unknown"
