# -*- test-case-name: tests.service.test_tap -*-
"""
``twistd izreg``: command-line options and C{makeService}.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import os
import signal

from twisted.application import internet, service, strports
from twisted.internet import defer
from twisted.python import usage

from izreg.edge.service import EdgeOptions
from izreg.service.config import Config, ConfigError, load


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
        ["log-level", None, None, f"debug, info, warn, error; re-read from the config on SIGHUP; default {Config.log_level}"],
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
        """Twisted endpoint string to listen on (plain HTTP), repeatable (default: the config's server.listen)"""
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
            from izreg.service.tls import ServerTLS, TLSConfigError, TLSFiles

            try:
                self.tls = ServerTLS(TLSFiles(self.config.tls_cert, self.config.tls_key, self.config.device_ca))
            except (TLSConfigError, OSError, ValueError) as e:
                raise SystemExit(f"izreg: TLS: {e}") from None
        else:
            self.tls = None


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
            raise SystemExit(f"izreg: the data directory {path} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"izreg: cannot create the data directory {path}: {parent} is not a writable directory")


class Options(usage.Options):
    subCommand = None

    @property
    def synopsis(self) -> str:
        # usage.Options prefixes a subcommand's synopsis with ours and the subcommand's name.
        return "" if self.subCommand else "server|edge [options]"
    subCommands = [["server", None, ServerOptions, "run the registry"],
                   ["edge", None, EdgeOptions, "run the edge proxy on a gateway (izreg/edge/)"]]

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


class _AfterFirstInterval(internet.TimerService):
    """
    A TimerService whose first call is one interval after start (not at start):
    a sweep during start-up is not wanted. (It was first added as a workaround
    for a deadlock: a store built on the reactor opened its LMDB database with
    a write transaction of its own while the sweep held the write lock. The
    root cause is fixed: every named database is opened once, with the
    environment, in L{izreg.storage.lmdbenv.open_env}.)
    """

    def startService(self) -> None:
        from twisted.internet import task

        service.Service.startService(self)
        call, args, kwargs = self.call
        self._loop = task.LoopingCall(call, *args, **kwargs)
        self._loop.clock = internet._maybeGlobalReactor(self.clock)
        self._loopFinished = self._loop.start(self.step, now=False)
        self._loopFinished.addErrback(self._failed)


def make_server(config: Config, reactor, tls=None, guard=None):
    from twisted.application.internet import StreamServerEndpointService

    from izreg.http.app import RegistryAPI
    from izreg.http.bodies import RegistrySite
    from izreg.http.plain import RefuseTLSFactory
    from izreg.service.services import RegistryService
    from izreg.service.tls import tls_endpoint

    from izreg.http.clientaddr import TrustedProxies
    from izreg.http.limits import BodyBudget, ConnectionLimits, SlowSenders

    api = RegistryAPI(chunk_min_length=config.chunk_min_length, ui=config.ui_enabled, budget=BodyBudget(config.body_memory))
    proxies = TrustedProxies(config.trusted_proxies)
    site = RegistrySite(
        api.resource(), api.body_for, proxies=proxies,
        connections=ConnectionLimits(config.max_connections, config.max_connections_per_address, proxies.trusted),
        slow=SlowSenders(reactor, config.header_timeout, config.body_min_rate, config.body_grace),
        timeout=config.idle_timeout or None, reactor=reactor,
    )
    top = RegistryService(config, api, reactor, tls=tls, guard=guard)
    for description in config.listen:
        strports.service(description, RefuseTLSFactory(site)).setServiceParent(top)
    for description in config.tls_listen:
        listener = StreamServerEndpointService(tls_endpoint(reactor, description, tls), site)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    expiry = internet.TimerService(config.upload_expiry_interval, lambda: defer.ensureDeferred(top.expire_uploads()))
    expiry.clock = reactor
    expiry.setServiceParent(top)
    flush = internet.TimerService(config.pull_flush_interval, top.flush_batches)
    flush.clock = reactor
    flush.setServiceParent(top)
    if config.gc_interval:
        gc = _AfterFirstInterval(config.gc_interval, lambda: defer.ensureDeferred(top.collect_garbage()))
        gc.clock = reactor
        gc.setServiceParent(top)
    if config.device_crl:
        crl = internet.TimerService(config.device_crl_interval, top.check_crl)
        crl.clock = reactor
        crl.setServiceParent(top)
    _SighupService(reactor, top.reload).setServiceParent(top)
    _operations(config, reactor, top, site)
    top.site = site
    return top


def _operations(config: Config, reactor, top, site) -> None:
    """Access log, metrics (and their listener), the log observer's level (izreg.service.metrics, .logs)."""
    import time

    from twisted.web.server import Site

    from izreg.http.accesslog import AccessLog
    from izreg.service.logs import LogSetup
    from izreg.service.metrics import Metrics
    from izreg.service.webhooks import Dispatcher

    top.metrics = Metrics()
    site.access_log = AccessLog(time.monotonic, [top.metrics.observe_request])
    if top.tls is not None:
        top.tls.on_handshake = top.metrics.tls_handshakes.inc
    for description in config.metrics_listen:
        metrics_site = Site(top.metrics.resource(reactor, reactor.getThreadPool()))
        metrics_site.log = lambda request: None  # scrapes are not access-logged
        strports.service(description, metrics_site).setServiceParent(top)
    top.log_setup = LogSetup(config.log_format, config.log_level)
    top.dispatcher = Dispatcher(None, reactor, None, config, top.metrics)
    top.dispatcher.setServiceParent(top)


def _print_startup_errors_in_one_line() -> None:
    """twistd lets start-up exceptions escape; ours are one line on the real stderr, not a traceback."""
    import sys

    from izreg import StartupError

    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if isinstance(value, StartupError) and sys.__stderr__ is not None:
            sys.__stderr__.write(f"izreg: {value}\n")
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def makeService(options: Options):
    from twisted.internet import reactor

    _print_startup_errors_in_one_line()
    if options.subCommand == "edge":
        from izreg.edge.service import make_edge

        return make_edge(options.subOptions.config, reactor, options.subOptions.policy)
    server_options = options.subOptions
    top = make_server(server_options.config, reactor, tls=server_options.tls)
    top.log_observer = top.log_setup.for_twistd(getattr(options, "parent", None))
    top.reload_config = lambda: load(server_options["config"], server_options.overrides)
    return top
