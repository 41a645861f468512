# -*- test-case-name: tests.service.test_tap -*-
"""
``twistd izreg``: command-line options and C{makeService}.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import os
import signal

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from izreg.edge.service import EdgeOptions
from izreg.service.config import LOG_LEVELS, Config, ConfigError, load


class ServerOptions(usage.Options):
    synopsis = "[--config FILE] [--data-dir DIR] [--listen ENDPOINT ...] [--tls-listen ENDPOINT --tls-cert PEM --tls-key PEM [--device-ca PEM ...]]"
    longdesc = "Run the registry. Command-line options override the config file (see etc/izreg.toml)."
    optParameters = [
        ["config", "c", None, "TOML config file (every option can be set there)"],
        ["data-dir", "d", None, f"data directory (default: $IZREG_DATA_DIR, else ./{Config.data_dir})"],
        ["tls-cert", None, None, "PEM server certificate chain for the TLS listener"],
        ["tls-key", None, None, "PEM private key of the server certificate"],
        ["device-crl", None, None, "PEM CRL(s) of the device CAs, re-read when the file changes (checked every tls.device_crl_interval s)"],
        ["log-format", None, None, f"text or json (one JSON object a line); default {Config.log_format}"],
        ["log-level", None, None, f"{', '.join(LOG_LEVELS)}; re-read from the config on SIGHUP; default {Config.log_level}"],
        ["min-free-disk", None, None, f'refuse pushes (503) below this free space: "2GB", "5%" (default {Config.min_free_disk})'],
    ]
    optFlags = [["token-service", None, "serve a Docker token endpoint at /v2/token and challenge with Bearer"],
                ["init", None, "create the data directory if it does not exist (only ./izreg-data is made without it)"]]

    def opt_version(self) -> None:
        """print izreg's version and exit"""
        from izreg import __version__

        print(f"izreg {__version__}")
        raise SystemExit(0)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tls-listen"] = []
        self["device-ca"] = []
        self["metrics-listen"] = []

    def opt_metrics_listen(self, endpoint: str) -> None:
        """Twisted endpoint string for the Prometheus /metrics listener, repeatable (default: none)"""
        self["metrics-listen"].append(endpoint)

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on (plain HTTP), repeatable (default: the config's server.listen, else tcp:5000:interface=127.0.0.1)"""
        self["listen"].append(endpoint)

    def opt_tls_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on with TLS (e.g. tcp:5443:interface=127.0.0.1), repeatable"""
        self["tls-listen"].append(endpoint)

    def opt_device_ca(self, path: str) -> None:
        """PEM file of CA certificates that issue device certificates, repeatable"""
        self["device-ca"].append(path)

    def postOptions(self) -> None:
        overrides = {
            "data_dir": self["data-dir"],
            "listen": self["listen"] or None,
            "tls_listen": self["tls-listen"] or None,
            "tls_cert": self["tls-cert"],
            "tls_key": self["tls-key"],
            "device_ca": self["device-ca"] or None,
            "device_crl": self["device-crl"],
            "token_service": True if self["token-service"] else None,
            "metrics_listen": self["metrics-listen"] or None,
            "log_format": self["log-format"],
            "log_level": self["log-level"],
            "min_free_disk": self["min-free-disk"],
            "init": True if self["init"] else None,
        }
        self.overrides = overrides
        # A bad config stops start-up with one line, not twistd's whole usage text.
        try:
            self.config = load(self["config"], overrides)
        except ConfigError as e:
            raise SystemExit(f"izreg: {e}") from None
        for option, descriptions in (("--listen", self.config.listen), ("--tls-listen", self.config.tls_listen),
                                     ("--metrics-listen", self.config.metrics_listen)):
            for description in descriptions:
                _check_endpoint(option, description)
        _check_data_dir(self.config.data_dir, self.config.init)
        if self.config.tls_listen:
            _server_tls(self.config)  # read now: a bad file stops start-up in one line (make_server builds its own)


def _check_endpoint(option: str, description: str) -> None:
    """Parse an endpoint string now, so a typo is one line and not a traceback at start-up."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(
            f"izreg: {option} {description!r} is not a valid Twisted endpoint string"
            f" (such as tcp:5000:interface=127.0.0.1): {e}"
        ) from None
    except OSError as e:  # Twisted's ssl: endpoint reads its key and certificate files while parsing
        raise SystemExit(
            f"izreg: {option} {description!r} cannot be used: {e.strerror}: {e.filename}"
            " (izreg's TLS listener is --tls-listen tcp:PORT with --tls-cert and --tls-key)"
        ) from None


def _check_data_dir(path: str, init: bool = False) -> None:
    """
    Fail early, in one line, if the data directory cannot be used. Nothing
    is created here: C{startService} makes the directory, so a start that
    fails later (a port in use) leaves no empty directory behind. A missing
    directory other than the default ``./izreg-data`` is an error unless
    C{init} (``--init``, ``[server] init = true``): a mistyped path must not
    start a brand-new empty registry.
    """
    if not os.path.exists(path) and not init and os.path.normpath(path) != os.path.normpath(Config.data_dir):
        raise SystemExit(f"izreg: the data directory {path} does not exist;"
                         " start with --init (or [server] init = true) to create a new registry there")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise SystemExit(f"izreg: the data directory {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise SystemExit(f"izreg: the data directory {path} is not writable{_writable_hint(path)}")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"izreg: cannot create the data directory {path}: {parent} is not a writable directory"
                         f"{_writable_hint(parent)}")


def _writable_hint(path: str) -> str:
    """What to do about a directory this process may not write: a read-only mount, or who it runs as; the way out."""
    import pwd

    if os.path.isdir(path) and os.statvfs(path).f_flag & os.ST_RDONLY:
        return " (a read-only file system): choose another --data-dir"
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return f" by {user} (uid {uid}): let that user write it, or choose another --data-dir"


class Options(usage.Options):
    subCommand = None

    @property
    def synopsis(self) -> str:
        # usage.Options prefixes a subcommand's synopsis with ours and the subcommand's name.
        return "" if self.subCommand else "server|edge [options]"
    subCommands = [["server", None, ServerOptions, "run the registry"],
                   ["edge", None, EdgeOptions, "run the edge proxy on a gateway: a pull-through cache of the registry"]]
    opt_version = ServerOptions.opt_version  # `twistd izreg --version` too (else Twisted's)

    def getSynopsis(self) -> str:
        # twistd's "Usage: twistd [options] izreg" joined to our empty synopsis with a space: without the
        # rstrip a subcommand's usage line read "izreg  server"
        return super().getSynopsis().rstrip()

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command: server or edge")


class _SighupService(service.Service):
    """Re-read TLS material on SIGHUP."""

    def __init__(self, reactor, reload) -> None:
        self.reactor, self.reload = reactor, reload

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def stopService(self):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        return super().stopService()


def make_server(config: Config, reactor, guard=None, twistd_options=None, reload_config=None):
    """
    The server's service tree on C{reactor}: the site, its listeners and the
    timers, built now (before twistd forks); the storage and everything over
    it are built by the service when it starts (L{RegistryService._compose}).

    @param guard: replaces the access guard (tests of the registry's own behaviour only).
    @param twistd_options: twistd's top-level options (where it logs), or C{None}.
    @param reload_config: C{() -> Config}, the configuration read again on SIGHUP, or C{None}.
    """
    import time

    from izreg.http.accesslog import AccessLog
    from izreg.http.bodies import RegistrySite
    from izreg.http.clientaddr import TrustedProxies
    from izreg.http.limits import ConnectionLimits, SlowReaders, SlowSenders
    from izreg.http.plain import RefuseTLSFactory
    from izreg.service.logs import LogSetup, forward_standard_logs
    from izreg.service.metrics import Metrics, ScrapeSite
    from izreg.service.proxyheader import ProxyHeaders, is_proxied, server_endpoint
    from izreg.service.services import RegistryService
    from izreg.service.tls import tls_endpoint
    from izreg.service.tree import AfterFirstInterval, Listener, Timer

    metrics = Metrics()
    proxies = TrustedProxies(config.trusted_proxies)
    site = RegistrySite(
        None, None, proxies=proxies,  # the API, once the storage is open (RegistrySite.serve)
        connections=ConnectionLimits(config.max_connections, config.max_connections_per_address, proxies.trusted),
        slow=SlowSenders(reactor, config.header_timeout, config.body_min_rate, config.body_grace),
        readers=SlowReaders(reactor, config.send_timeout),
        timeout=config.idle_timeout or None, reactor=reactor,
        access_log=AccessLog(time.monotonic, [metrics.observe_request]),
    )
    tls = _server_tls(config, on_handshake=metrics.tls_handshakes.inc) if config.tls_listen else None
    if tls is not None:
        metrics.refusals.watch("tls", tls.refusals)
    log_setup = LogSetup(config.log_format, config.log_level)
    forward_standard_logs()  # psycopg's pool, botocore: their lines in our log, not as [stderr#error]
    top = RegistryService(config, reactor, site, tls=tls, guard=guard, metrics=metrics, log_setup=log_setup,
                          log_observer=log_setup.for_twistd(twistd_options), reload_config=reload_config)
    # haproxy: listeners read the PROXY header before a connection is counted (the client's address, not haproxy's)
    headers = None
    if any(map(is_proxied, config.listen + config.tls_listen)):
        headers = ProxyHeaders(reactor, site.connections)
    for description in config.listen:
        Listener(server_endpoint(reactor, description, headers), RefuseTLSFactory(site),
                 "--listen or [server] listen").setServiceParent(top)
    threads = admission = None
    if config.tls_listen:  # started before the TLS listeners, stopped after them
        from izreg.service.tls.admission import HandshakeAdmission
        from izreg.service.tlsthreads import HandshakeThreads
        threads = HandshakeThreads(reactor, config.tls_handshake_threads)
        threads.setServiceParent(top)
        admission = HandshakeAdmission(reactor, config.tls_max_handshakes, config.tls_handshake_timeout,
                                       config.idle_timeout, config.tls_max_waiting, config.tls_group_ipv4_prefix,
                                       config.tls_group_ipv6_prefix)
        from izreg.service.tls.known import FILE_NAME, KnownGroupsFile
        KnownGroupsFile(admission, os.path.join(config.data_dir, FILE_NAME), reactor).setServiceParent(top)
        metrics.watch_handshakes(admission)
        top.on_device = admission.device_request  # a group is known once a request authenticated as a device
        site.connections.evict = admission.evict  # at max_connections, close one still in its handshake first
    metrics.watch_connections(site.connections, admission)
    for description in config.tls_listen:
        Listener(tls_endpoint(reactor, description, tls, threads, admission, headers), site,
                 "--tls-listen or [tls] listen", "https").setServiceParent(top)
    Timer(config.upload_expiry_interval, lambda: defer.ensureDeferred(top.expire_uploads()), reactor).setServiceParent(top)
    Timer(config.pull_flush_interval, top.flush_batches, reactor).setServiceParent(top)
    from izreg.service.bursttrim import CHECK_INTERVAL
    Timer(CHECK_INTERVAL, top.trim_after_burst, reactor).setServiceParent(top)
    if config.gc_interval:
        AfterFirstInterval(config.gc_interval, lambda: defer.ensureDeferred(top.collect_garbage()),
                           reactor).setServiceParent(top)
    if config.device_crl:
        Timer(config.device_crl_interval, top.check_crl, reactor).setServiceParent(top)
    _SighupService(reactor, top.reload).setServiceParent(top)
    for description in config.metrics_listen:
        scrapes = ScrapeSite(metrics.resource(reactor, reactor.getThreadPool()))
        Listener(serverFromString(reactor, description), scrapes, "--metrics-listen or [metrics] listen",
                 "metrics").setServiceParent(top)
    return top


def _server_tls(config: Config, on_handshake=None):
    """The TLS listeners' connection creator (L{izreg.service.tls.ServerTLS}); a bad file is one line."""
    from izreg.service.tls import ServerTLS, TLSConfigError, TLSFiles

    try:
        return ServerTLS(TLSFiles(config.tls_cert, config.tls_key, config.device_ca), on_handshake=on_handshake)
    except (TLSConfigError, OSError, ValueError) as e:
        raise SystemExit(f"izreg: TLS: {e}") from None


def _print_startup_errors_in_one_line(log_on_stdout: bool = False) -> None:
    """
    twistd lets start-up exceptions escape; ours are one line on the real
    stderr, not a traceback. The service has logged it already: when that log
    is on standard output and standard output is where stderr goes too (one
    terminal, or C{2>&1}), the line is not printed a second time.
    """
    import sys

    from izreg import StartupError

    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if isinstance(value, StartupError) and sys.__stderr__ is not None:
            if not (log_on_stdout and _same_file(sys.__stdout__, sys.__stderr__)):
                sys.__stderr__.write(f"izreg: {value}\n")
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def _same_file(one, other) -> bool:
    """Whether two standard streams write to the same file, pipe or terminal."""
    try:
        a, b = os.fstat(one.fileno()), os.fstat(other.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def makeService(options: Options):
    from twisted.internet import reactor

    from izreg.service.logs import logs_to_stdout

    _print_startup_errors_in_one_line(logs_to_stdout(getattr(options, "parent", None)))
    if options.subCommand == "edge":
        from izreg.edge.service import make_edge

        return make_edge(options.subOptions.config, reactor, options.subOptions.policy,
                         twistd_options=getattr(options, "parent", None))
    server_options = options.subOptions
    return make_server(server_options.config, reactor,
                       twistd_options=getattr(options, "parent", None),
                       reload_config=lambda: load(server_options["config"], server_options.overrides))
