"""The twistd plugin's options and the service tree makeService builds (no daemon)."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from izreg import StartupError
from izreg.service.bursttrim import CHECK_INTERVAL as BURST_CHECK_INTERVAL
from izreg.service.services import RegistryService
from izreg.service.tree import ListenerBindError, cannot_listen
from izreg.tap import Options, make_server


def parse(*argv):
    """Parse options; a new data dir is made on start (--init), as these tests use fresh ones."""
    argv = list(argv)
    if argv[:1] == ["server"] and "--data-dir" in argv and "--init" not in argv:
        argv.insert(1, "--init")
    options = Options()
    options.parseOptions(argv)
    return options.subOptions.config


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse("server")
    assert config.data_dir == "izreg-data"
    assert config.listen == ("tcp:5000:interface=127.0.0.1",)


def test_options_override_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = ["tcp:1"]\n[auth]\ntoken_service = false\n')
    config = parse("server", "--config", str(path), "--data-dir", str(tmp_path / "d"),
                   "--listen", "tcp:2", "--listen", "unix:/tmp/x.sock", "--token-service")
    assert config.listen == ("tcp:2", "unix:/tmp/x.sock")
    assert config.data_dir == str(tmp_path / "d")
    assert config.token_service is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tls-listen", "tcp:5443"], "izreg: --tls-listen needs --tls-cert and --tls-key (tls.cert, tls.key)"),
        (["--tls-listen", "tcp:5443", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "izreg: TLS: "),
        (["--listen", "bogus:1"], "izreg: --listen 'bogus:1' is not a valid Twisted endpoint string"),
        (["--listen", "tcp:notaport"], "izreg: --listen 'tcp:notaport' is not a valid Twisted endpoint string"),
        (["--tls-listen", "tcp:1:nosuch=1", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "izreg: --tls-listen 'tcp:1:nosuch=1' is not a valid Twisted endpoint string"),
        # Twisted's own ssl: endpoint reads its certificate (server.pem by default) while the string is parsed
        (["--listen", "ssl:1"], "izreg: --listen 'ssl:1' cannot be used: No such file or directory: "),
        (["--tls-listen", "ssl:1:privateKey=/nonexistent.key:certKey=/nonexistent.pem", "--tls-cert", "c.pem",
          "--tls-key", "k.pem"], "izreg: --tls-listen 'ssl:1:privateKey=/nonexistent.key:certKey=/nonexistent.pem' cannot be"),
    ],
)
def test_bad_options_stop_with_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit) as e:
        parse("server", "--data-dir", str(tmp_path / "d"), *argv)
    assert str(e.value.code).startswith(message)
    assert "\n" not in str(e.value.code)


def test_unwritable_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        parse("server", "--data-dir", str(blocker / "sub"))
    assert str(e.value.code).startswith("izreg: cannot create the data directory")
    # what to do: who may not write there, and the way out
    assert str(e.value.code).endswith(f" is not a writable directory by {pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()}):"
                                      " let that user write it, or choose another --data-dir")


@pytest.mark.e2e  # mounts a file system
def test_a_data_dir_on_a_read_only_mount_says_so(tmp_path):
    from tests.helpers.tmpfs import tmpfs

    with tmpfs(tmp_path / "ro", "ro,size=1m", "a read-only file system") as mount:
        for argv, said in [((str(mount),), f"the data directory {mount} is not writable"),
                           ((str(mount / "new"), "--init"), f"{mount} is not a writable directory")]:
            with pytest.raises(SystemExit) as e:
                parse("server", "--data-dir", *argv)
            assert str(e.value.code).endswith(f"{said} (a read-only file system): choose another --data-dir")


def test_a_subcommand_is_required():
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError):
        Options().parseOptions([])


def test_service_tree(tmp_path):
    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", "tcp:0", "--listen", "tcp:0:interface=127.0.0.2")
    reactor = MemoryReactorClock()
    top = make_server(config, reactor)
    assert isinstance(top, RegistryService)
    listeners = [s for s in top if isinstance(s, StreamServerEndpointService)]
    timers = [s for s in top if isinstance(s, TimerService)]
    assert len(listeners) == 2
    assert sorted(t.step for t in timers) == sorted([config.upload_expiry_interval, config.pull_flush_interval,
                                                     config.gc_interval, BURST_CHECK_INTERVAL])
    # nothing is opened before startService (twistd forks in between)
    assert top.registry is None and top.api is None and not (tmp_path / "d" / "index").exists()
    # the listeners bind on the reactor make_server was given, not on the global one
    top.privilegedStartService()
    assert sorted(port[0] for port in reactor.tcpServers) == [0, 0]
    assert sorted(port[3] for port in reactor.tcpServers) == ["", "127.0.0.2"]


@pytest_twisted.ensureDeferred
async def test_storage_opens_on_start_and_closes_on_stop(tmp_path):
    from twisted.internet import reactor

    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", "tcp:0:interface=127.0.0.1")
    top = make_server(config, reactor)
    top.startService()
    try:
        assert top.registry is not None
        assert (tmp_path / "d" / "index" / "data.mdb").exists()
        assert (tmp_path / "d" / "bootstrap.txt").exists()
        assert top.api.registry is top.registry
    finally:
        await top.stopService()
    assert top.registry is None


@pytest_twisted.ensureDeferred
async def test_batched_pulls_and_last_used_stamps_are_written_on_the_writer_thread(tmp_path):
    import threading

    from twisted.internet import reactor

    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", "tcp:0:interface=127.0.0.1")
    top = make_server(config, reactor)
    top.startService()
    try:
        threads = []
        for batch in (top.authenticator.last_used, top.pulls._batch):
            write = batch._write
            batch._write = lambda b, write=write: (threads.append(threading.current_thread().name), write(b))[1]
        store = top.authenticator.store
        [account] = store.list_accounts()
        [key] = store.list_keys(account.account_id)
        top.authenticator.last_used.put(key.key_id, 1234.0)
        top.pulls.record(account.account_id, "gw1", f"{account.account_id}/app", "sha256:" + "a" * 64, 1234.0)
        await top.flush_batches()
        assert len(threads) == 2 and all("izreg-writer" in name for name in threads)
        assert store.get_key(key.key_id).last_used == 1234.0
        assert not top.pulls.pending and not top.authenticator.last_used.pending
    finally:
        await top.stopService()


#: what a port in use is told besides the socket error: what to do, and the setting that chose the port
IN_USE = (" (another process listens there, another izreg perhaps: stop it or choose a free port"
          " in --listen or [server] listen)")
EDGE_IN_USE = IN_USE.replace("[server]", "[edge]")


@pytest.fixture
def taken_port():
    """A loopback port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_port_in_use_stops_start_up(tmp_path, taken_port):
    from twisted.internet import reactor

    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", f"tcp:{taken_port}:interface=127.0.0.1")
    top = make_server(config, reactor)
    with pytest.raises(StartupError) as e:
        top.privilegedStartService()
    assert str(e.value).startswith(f"cannot listen on 127.0.0.1:{taken_port}: ")
    assert str(e.value).endswith(IN_USE)
    assert "\n" not in str(e.value)


@pytest.mark.e2e  # a real izreg process
def test_twistd_on_a_port_in_use_says_one_line_and_leaves_nothing(tmp_path, taken_port):
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    done = subprocess.run(
        [twistd, "-n", "--logfile", str(tmp_path / "log"), "--pidfile", str(tmp_path / "pid"), "izreg", "server",
         "--init", "--data-dir", str(tmp_path / "d"), "--listen", f"tcp:{taken_port}:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"izreg: cannot listen on 127.0.0.1:{taken_port}: [Errno 98] Address already in use" + IN_USE]
    assert not (tmp_path / "pid").exists() and not (tmp_path / "d").exists()
    assert "cannot listen" in (tmp_path / "log").read_text()


@pytest.mark.e2e  # a real izreg edge process
def test_the_edge_on_a_port_in_use_says_one_line_with_what_to_do(tmp_path, taken_port):
    """The edge said only "[Errno 98] Address already in use"; it is told what the registry is (one code)."""
    from izreg.devcerts import write_dev_certs

    certs = write_dev_certs(str(tmp_path / "certs"), time.time(), "0123456789abcdef0123456789abcdef")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    done = subprocess.run(
        [twistd, "-n", "--logfile", str(tmp_path / "log"), "--pidfile", str(tmp_path / "pid"), "izreg", "edge",
         "--upstream", "https://127.0.0.1:9", "--upstream-ca", certs.ca_cert, "--device-cert", certs.client_cert,
         "--device-key", certs.client_key, "--cache-dir", str(tmp_path / "cache"),
         "--listen", f"tcp:{taken_port}:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"izreg: cannot listen on 127.0.0.1:{taken_port}: [Errno 98] Address already in use" + EDGE_IN_USE]
    assert not (tmp_path / "pid").exists()


@pytest.mark.parametrize(
    "port, error, hint",
    [
        (5000, errno.EADDRINUSE, IN_USE),
        (443, errno.EACCES, " (ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up in"
                            " --listen or [server] listen, or give the process the capability"
                            " (AmbientCapabilities=CAP_NET_BIND_SERVICE under systemd))"),
        (5000, errno.EADDRNOTAVAIL, " (no interface of this machine has that address: use 127.0.0.1, 0.0.0.0 or one"
                                    " of its own in --listen or [server] listen)"),
        (5000, errno.EACCES, ""),  # not a privileged port: no guess
    ],
)
def test_a_bind_error_says_what_to_do(port, error, hint):
    failed = ListenerBindError(CannotListenError("192.0.2.1", port, OSError(error, os.strerror(error))),
                               "--listen or [server] listen")
    assert cannot_listen(failed) == f"cannot listen on 192.0.2.1:{port}: [Errno {error}] {os.strerror(error)}{hint}"


@pytest.mark.parametrize("flags, setting", [
    (["--listen", "tcp:{port}:interface=127.0.0.1"], "--listen or [server] listen"),
    (["--listen", "tcp:0:interface=127.0.0.1", "--tls-listen", "tcp:{port}:interface=127.0.0.1"],
     "--tls-listen or [tls] listen"),
    (["--listen", "tcp:0:interface=127.0.0.1", "--metrics-listen", "tcp:{port}:interface=127.0.0.1"],
     "--metrics-listen or [metrics] listen"),
])
def test_a_port_in_use_names_the_setting_of_that_listener(tmp_path, taken_port, flags, setting):
    from twisted.internet import reactor

    from izreg.devcerts import write_dev_certs

    tls = []
    if "--tls-listen" in flags:
        certs = write_dev_certs(str(tmp_path / "certs"), time.time(), "0123456789abcdef0123456789abcdef")
        tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    config = parse("server", "--data-dir", str(tmp_path / "d"), *[f.format(port=taken_port) for f in flags], *tls)
    top = make_server(config, reactor)
    with pytest.raises(StartupError) as e:
        top.privilegedStartService()
    try:
        assert str(e.value).endswith(f"choose a free port in {setting})")
    finally:
        for listener in top:
            if getattr(listener, "port", None) is not None:
                listener.port.stopListening()


def test_start_up_says_once_where_it_serves_with_the_real_ports(tmp_path):
    from twisted.internet import reactor
    from twisted.logger import capturedLogs, formatEvent

    from izreg.devcerts import write_dev_certs

    certs = write_dev_certs(str(tmp_path / "certs"), time.time(), "0123456789abcdef0123456789abcdef")
    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", "tcp:0:interface=127.0.0.1",
                   "--tls-listen", "tcp:0:interface=127.0.0.1", "--tls-cert", certs.server_cert,
                   "--tls-key", certs.server_key, "--metrics-listen", "tcp:0:interface=127.0.0.1")
    top = make_server(config, reactor)
    with capturedLogs() as events:
        top.privilegedStartService()
    try:
        ports = {listener.kind: listener.port.getHost().port for listener in top if hasattr(listener, "kind")}
        assert set(ports) == {"http", "https", "metrics"} and 0 not in ports.values()
        said = [formatEvent(e) for e in events if "serving" in formatEvent(e)]
        assert said == [f"izreg serving http://127.0.0.1:{ports['http']}/ (TLS: https://127.0.0.1:{ports['https']}/;"
                        f" metrics: http://127.0.0.1:{ports['metrics']}/metrics)"]
    finally:
        for listener in top:
            if getattr(listener, "port", None) is not None:
                listener.port.stopListening()


def test_the_start_up_line_of_other_listeners():
    from twisted.internet.address import IPv6Address, UNIXAddress

    from izreg.service.tree import Listener, serving

    class Bound:
        def __init__(self, address):
            self.address = address

        def getHost(self):
            return self.address

    def listener(address, kind="http"):
        bound = Listener(None, None, kind=kind)
        bound.port = Bound(address)
        return bound

    assert serving("izreg", [listener(IPv6Address("TCP", "::1", 5000)), listener(UNIXAddress(b"/run/izreg.sock"))]) \
        == "izreg serving http://[::1]:5000/, unix:/run/izreg.sock"
    assert serving("izreg edge", [listener(IPv6Address("TCP", "::", 5443), "https")]) \
        == "izreg edge serving https://[::1]:5443/ (all interfaces)"


def test_a_listener_on_every_interface_is_named_by_an_address_a_client_can_open(tmp_path):
    """Not http://0.0.0.0:PORT/ (no client opens that): the loopback address, the real port, and that it is all."""
    import socket

    from twisted.internet import reactor
    from twisted.logger import capturedLogs, formatEvent

    config = parse("server", "--data-dir", str(tmp_path / "d"), "--listen", "tcp:0:interface=0.0.0.0",
                   "--metrics-listen", "tcp:0:interface=0.0.0.0")
    top = make_server(config, reactor)
    with capturedLogs() as events:
        top.privilegedStartService()
    try:
        ports = {listener.kind: listener.port.getHost().port for listener in top if hasattr(listener, "kind")}
        said = [formatEvent(e) for e in events if "serving" in formatEvent(e)]
        assert said == [f"izreg serving http://127.0.0.1:{ports['http']}/ (all interfaces) (metrics:"
                        f" http://127.0.0.1:{ports['metrics']}/metrics (all interfaces))"]
        socket.create_connection(("127.0.0.1", ports["http"]), timeout=5).close()  # it opens
    finally:
        for listener in top:
            if getattr(listener, "port", None) is not None:
                listener.port.stopListening()


@pytest.mark.e2e  # a real izreg process
@pytest.mark.parametrize("together", [True, False])
def test_a_start_up_error_logged_to_the_terminal_is_not_printed_twice(tmp_path, taken_port, together):
    # twistd -n logs to standard output; the one-line error on stderr would repeat it on the same screen
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    done = subprocess.run(
        [twistd, "-n", "--pidfile", "", "izreg", "server", "--init", "--data-dir", str(tmp_path / "d"),
         "--listen", f"tcp:{taken_port}:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if together else subprocess.PIPE, text=True, timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    )
    assert done.returncode == 1
    said = [line for line in (done.stdout + (done.stderr or "")).splitlines() if "cannot listen" in line]
    # together: the log line only; apart: the log line on stdout and "izreg: ..." on stderr
    assert len(said) == (1 if together else 2), said
    assert "Traceback" not in done.stdout + (done.stderr or "")
    if not together:
        assert done.stderr.splitlines() == [f"izreg: cannot listen on 127.0.0.1:{taken_port}: [Errno 98] Address already in use" + IN_USE]


def test_options_create_no_data_dir(tmp_path):
    parse("server", "--data-dir", str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()


def test_usage_names_the_subcommand_once(capsys):
    with pytest.raises(SystemExit):
        Options().parseOptions(["server", "--help"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.count("server") == 1


@pytest.mark.parametrize("command", ["server", "edge"])
def test_twistds_usage_line_has_one_space_before_the_subcommand(capsys, monkeypatch, command):
    from twisted.scripts.twistd import ServerOptions as TwistdOptions

    monkeypatch.setattr(sys, "argv", ["twistd"])  # the program name twistd's usage line starts with
    with pytest.raises(SystemExit):
        TwistdOptions().parseOptions(["izreg", command, "--help"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"Usage: twistd [options] izreg {command} ") and "  " not in first, first


def test_twistd_izreg_version_is_izregs(capsys):
    from izreg import __version__

    with pytest.raises(SystemExit) as done:
        Options().parseOptions(["--version"])
    assert (done.value.code, capsys.readouterr().out) == (0, f"izreg {__version__}\n")


def test_help_names_every_log_level_the_config_takes(capsys):
    from izreg.service.config import LOG_LEVELS

    with pytest.raises(SystemExit):
        Options().parseOptions(["server", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--log-level= {', '.join(LOG_LEVELS)};" in help_text
