"""
Run a real registry process for end-to-end tests.

L{RegistryProcess} starts ``twistd -n izreg server`` from this checkout
(``PYTHONPATH`` = repository root) on a free loopback port, waits for the
"starting on" line on its stdout (an event read from the pipe, never a
sleep), and can stop, kill -9 and restart it on the same data dir and port.

Set ``IZREG_E2E_BACKEND=distribution`` to run the very same tests against
CNCF distribution (Debian's ``docker-registry``) instead: this checks the
tests themselves against a reference registry. izreg-only checks (the
on-disk layout) are skipped there.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections import deque

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: seconds to wait for the listening line before failing the test
START_TIMEOUT = float(os.environ.get("IZREG_E2E_START_TIMEOUT", "30"))
#: seconds to wait for a clean exit after SIGTERM
STOP_TIMEOUT = 20.0

BACKEND = os.environ.get("IZREG_E2E_BACKEND", "izreg")


class ServerStartError(AssertionError):
    pass


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_account() -> str:
    """A random 32-hex-digit account id."""
    return secrets.token_hex(16)


def repo_name(name: str = "app", account: str | None = None) -> str:
    """A full repository name ``<account>/<name>`` (random account by default)."""
    return f"{account or random_account()}/{name}"


class RegistryProcess:
    """
    One registry server process, restartable on the same data dir and port.

    Attributes: C{url} (``http://127.0.0.1:PORT``), C{host} (``127.0.0.1:PORT``),
    C{port}, C{data_dir}, C{backend}, C{creds} (``None`` while izreg has no
    authentication; later a ``"KEY:SECRET"`` string that the helpers pass as
    ``--creds`` / HTTP basic auth), C{extra_args} (appended to the server
    command line), C{log_lines} (everything the process printed).
    """

    def __init__(self, data_dir: str, log_path: str | None = None, port: int | None = None,
                 backend: str = BACKEND, extra_args=(), creds: str | None = None, config: str | None = None,
                 create_data_dir: bool = True):
        self.data_dir = os.fspath(data_dir)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.backend = backend
        self.extra_args = list(extra_args)
        #: a TOML config file given with --config (e.g. [metadata] and [storage] of a cluster node)
        self.config_file = os.fspath(config) if config else None
        self.creds = creds
        #: False: start() leaves a missing data dir to the server (``--init`` in C{extra_args})
        self.create_data_dir = create_data_dir
        self.account: str | None = None
        self.log_path = log_path
        self.log_lines: deque[str] = deque(maxlen=5000)
        self.lines_logged = 0  # total, for log_mark()/wait_for_log()
        self._log_cond = threading.Condition()
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._log_file = open(log_path, "a", buffering=1) if log_path else None

    # -- credentials ----------------------------------------------------------------------
    #
    # izreg creates one account and one access key on its first start and writes them to
    # DATA_DIR/bootstrap.txt; start() reads that file into C{account} and C{creds}
    # ("KEY:<access key>", what skopeo --creds and HTTP Basic take). Under the
    # distribution backend there is no auth: C{creds} stays None and C{account} is random.

    @property
    def requests_auth(self):
        """C{auth=} for requests/oras (None while there is no authentication)."""
        if self.creds is None:
            return None
        user, _, password = self.creds.partition(":")
        return (user, password)

    # -- process control ----------------------------------------------------------------

    def command(self) -> list[str]:
        if self.backend == "distribution":
            return ["docker-registry", "serve", self._distribution_config()]
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "-n", "--logfile=-", "--pidfile=", "izreg", "server",
                "--data-dir", self.data_dir,
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                *(["--config", self.config_file] if self.config_file else []),
                *self.extra_args]

    def _ready_pattern(self) -> re.Pattern:
        if self.backend == "distribution":
            return re.compile(r"listening on 127\.0\.0\.1:%d" % self.port)
        return re.compile(r"starting on")

    def _distribution_config(self) -> str:
        os.makedirs(self.data_dir, exist_ok=True)
        path = os.path.join(os.path.dirname(self.data_dir.rstrip("/")),
                            f"distribution-{self.port}.yml")
        with open(path, "w") as f:
            f.write(
                "version: 0.1\n"
                "log: {level: info, accesslog: {disabled: false}}\n"
                "storage:\n"
                f"  filesystem: {{rootdirectory: {self.data_dir}}}\n"
                "  delete: {enabled: true}\n"
                "http:\n"
                f"  addr: 127.0.0.1:{self.port}\n"
                "  secret: izreg-e2e-fixed-secret\n"
            )
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and block until it logs that it is listening."""
        assert not self.running, "already running"
        if self.create_data_dir:
            os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.starts += 1
        self._log(f"=== e2e: start #{self.starts}: {' '.join(self.command())}")
        ready = threading.Event()
        pattern = self._ready_pattern()
        proc = subprocess.Popen(
            self.command(), cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, start_new_session=True,
        )
        self._proc = proc

        def read():
            for line in proc.stdout:
                self._log(line.rstrip("\n"))
                if not ready.is_set() and pattern.search(line):
                    ready.set()
            proc.stdout.close()
            try:
                proc.wait(10)  # EOF: the process is going; reaped, so start() sees its exit code
            except subprocess.TimeoutExpired:
                pass
            ready.set()

        self._reader = threading.Thread(target=read, name=f"registry-log-{self.port}", daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or proc.poll() is not None:
            rc = proc.poll()
            if rc is None:
                self._terminate(signal.SIGKILL)
            raise ServerStartError(
                f"registry did not report listening within {timeout}s (exit code {rc}).\n"
                f"command: {self.command()}\n--- log ---\n{self.log_tail()}"
            )
        self._after_start()

    def _after_start(self) -> None:
        # One round trip: the reactor serves requests only after every startService ran
        # (so the bootstrap file is written by the time this answers).
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\nConnection: close\r\n\r\n")
            status = sock.recv(64)
        if not status.startswith(b"HTTP/1."):
            raise ServerStartError(f"GET /v2/ answered {status!r}\n{self.log_tail()}")
        if self.backend != "izreg":
            self.account = self.account or random_account()
            return
        if self.creds is None:
            values = self.read_bootstrap()
            self.account = values["account"]
            self.creds = f"KEY:{values['access_key']}"

    def read_bootstrap(self) -> dict[str, str]:
        path = os.path.join(self.data_dir, "bootstrap.txt")
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise ServerStartError(f"no {path} after the first start\n{self.log_tail()}") from None
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def cli(self, *args: str) -> str:
        """Run ``izreg --data-dir DATA_DIR ARGS`` (the admin CLI, fine while the server runs)."""
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        config = ["--config", self.config_file] if self.config_file else []
        proc = subprocess.run([sys.executable, "-m", "izreg.cli", *config, "--data-dir", self.data_dir, *args],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"izreg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout.strip()

    def new_account(self, read_only: bool = False) -> tuple[str, str]:
        """A new account and an access key of it: C{(account_id, "KEY:<key>")}."""
        account = self.cli("account", "create", "--name", "e2e")
        key = self.cli("key", "create", account, "--name", "e2e", *(["--read-only"] if read_only else []))
        return account, f"KEY:{key}"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for exit; returns the exit code. SIGKILLs and raises on timeout."""
        if not self.running:
            return self._proc.returncode if self._proc else 0
        self._log("=== e2e: SIGTERM")
        self._proc.send_signal(signal.SIGTERM)
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._terminate(signal.SIGKILL)
            raise AssertionError(f"registry ignored SIGTERM for {timeout}s\n{self.log_tail()}")
        self._join_reader()
        return rc

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit by itself (no signal sent); its exit code. Raises on timeout."""
        rc = self._proc.wait(timeout)
        self._join_reader()
        return rc

    def kill9(self) -> None:
        """SIGKILL the process (no cleanup at all) and reap it."""
        if self.running:
            self._log("=== e2e: SIGKILL")
            self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (SIGTERM) if running, then start again on the same data dir and port."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Teardown: stop the process, never raise for a slow exit."""
        try:
            if self.running:
                self.stop()
        finally:
            if self.running:
                self._terminate(signal.SIGKILL)
            if self._log_file:
                self._log_file.close()
                self._log_file = None

    def _terminate(self, sig) -> None:
        try:
            self._proc.send_signal(sig)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None

    # -- logs ---------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        with self._log_cond:
            self.log_lines.append(line)
            self.lines_logged += 1
            self._log_cond.notify_all()
        if self._log_file:
            try:
                self._log_file.write(line + "\n")
            except ValueError:
                pass

    def log_mark(self) -> int:
        """A position in the log; L{wait_for_log} looks only at lines after it."""
        with self._log_cond:
            return self.lines_logged

    def wait_for_log(self, regex: str, since: int, timeout: float = 15.0) -> str:
        """Block until a line after C{since} matches C{regex} (woken by the log reader, no polling)."""
        pattern = re.compile(regex)

        def found():
            new = min(self.lines_logged - since, len(self.log_lines))
            for line in list(self.log_lines)[len(self.log_lines) - new:]:
                if pattern.search(line):
                    return line
            return None

        with self._log_cond:
            line = self._log_cond.wait_for(found, timeout)
        if not line:
            raise AssertionError(f"no log line matching {regex!r} within {timeout}s\n{self.log_tail(50)}")
        return line

    def send_signal(self, sig) -> None:
        assert self.running, "not running"
        self._proc.send_signal(sig)

    def log_tail(self, n: int = 200) -> str:
        return "\n".join(list(self.log_lines)[-n:])

    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    def __repr__(self) -> str:
        return f"<RegistryProcess {self.backend} {self.url} data={self.data_dir} running={self.running}>"


@contextlib.contextmanager
def running(registry: RegistryProcess):
    """Start C{registry} and close it afterwards, whatever happens (for fixtures: C{with running(reg): yield reg})."""
    try:
        registry.start()
        yield registry
    finally:
        registry.close()


def status_of(sock) -> int:
    """The status of the answer on C{sock} (a socket a raw request was sent on), read as soon as it comes."""
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        assert data, f"closed before a status line: {head!r}"
        head += data
    return int(head.split(b" ", 2)[1])
