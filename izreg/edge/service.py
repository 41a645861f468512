# -*- test-case-name: tests.edge.test_edge_e2e -*-
"""
``twistd izreg edge``: options, and the service that owns the edge's cache.

The cache's LMDB is opened in C{startService} (after twistd forked), like
the registry's. Children: the listeners, the pin refresh timer, the timer
that looks for new pins (``izreg-edge pin``), the pull report timer, the
timer that checks the registry when nothing else asks it, and the
metrics listeners (``--metrics-listen``).
"""

from __future__ import annotations

import datetime

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from izreg.core.text import plural
from izreg.edge.config import NEW_PIN_CHECK, EdgeConfig, load
from izreg.service.config import LOG_LEVELS, ConfigError
from izreg.service.logs import offer_observer
from izreg.service.tree import start_listening


class EdgeOptions(usage.Options):
    synopsis = ("--upstream https://REGISTRY:PORT --device-cert PEM --device-key PEM [--upstream-ca PEM]"
                " [--listen ENDPOINT ...] [--cache-dir DIR] [--cache-size 20GB] [--pin ACCOUNT/APP:TAG ...]"
                " [--metrics-listen ENDPOINT ...] [--config FILE]")
    longdesc = ("Run the edge proxy on a gateway: a pull-through cache of the registry, reached over mutual"
                " TLS with the gateway's device certificate. Options override the config file's [edge] table"
                " (see etc/izreg-edge.toml).")
    optParameters = [
        ["config", "c", None, "TOML config file ([edge] table)"],
        ["upstream", None, None, "the registry's URL, https://HOST[:PORT]"],
        ["upstream-ca", None, None, "PEM CA certificate(s) to verify the registry (default: the system's)"],
        ["device-cert", None, None, "PEM device certificate of this gateway (chain allowed)"],
        ["device-key", None, None, "PEM private key of the device certificate"],
        ["cache-dir", None, None, "cache directory (default: ./izreg-edge-cache)"],
        ["cache-size", None, None, "cache bound, e.g. 20GB or 512MiB (default: 20GB)"],
        ["log-level", None, None,
         f"{', '.join(LOG_LEVELS)}: the lowest level logged (default: {EdgeConfig.log_level})"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["metrics-listen"] = []
        self["pin"] = []

    def opt_version(self) -> None:
        """print izreg's version and exit"""
        from izreg import __version__

        print(f"izreg {__version__}")  # as `twistd izreg server --version` (else twistd's own, Twisted's version)
        raise SystemExit(0)

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on (plain HTTP), repeatable (default: tcp:8080:interface=127.0.0.1)"""
        self["listen"].append(endpoint)

    def opt_metrics_listen(self, endpoint: str) -> None:
        """Twisted endpoint string for the Prometheus /metrics listener, repeatable (default: none)"""
        self["metrics-listen"].append(endpoint)

    def opt_pin(self, ref: str) -> None:
        """Image to fetch ahead and keep (<account>/<app>:<tag>), repeatable"""
        self["pin"].append(ref)

    def postOptions(self) -> None:
        from izreg.tap import _check_endpoint

        overrides = {
            "upstream": self["upstream"], "upstream_ca": self["upstream-ca"],
            "device_cert": self["device-cert"], "device_key": self["device-key"],
            "cache_dir": self["cache-dir"], "cache_size": self["cache-size"],
            "listen": self["listen"] or None, "pin": self["pin"] or None,
            "metrics_listen": self["metrics-listen"] or None,
            "log_level": self["log-level"],
        }
        try:
            self.config = load(self["config"], overrides)
        except ConfigError as e:
            raise SystemExit(f"izreg edge: {e}") from None
        for option, descriptions in (("--listen", self.config.listen),
                                     ("--metrics-listen", self.config.metrics_listen)):
            for description in descriptions:
                _check_endpoint(option, description)
        from izreg.edge.upstream import MutualTLSPolicy

        try:
            self.policy = MutualTLSPolicy(self.config.device_cert, self.config.device_key, self.config.upstream_ca)
        except Exception as e:  # TLSConfigError (it says which file, what is wrong, what to do), OpenSSL's: one line
            raise SystemExit(f"izreg edge: TLS: {e}") from None


class EdgeService(service.MultiService):
    log = Logger()

    def __init__(self, config: EdgeConfig, policy, reactor, api, site, log_observer=None, metrics=None) -> None:
        super().__init__()
        self.config, self.policy, self.reactor = config, policy, reactor
        #: L{izreg.edge.metrics.EdgeMetrics} (with a metrics listener), or None
        self.metrics = metrics
        self.api, self.site = api, site  # the API is bound to the cache and upstream when they open
        self.cache = self.reporter = self.pinner = None
        #: the observer twistd uses instead of its own (the [edge] log_level filter), or None
        self.log_observer = log_observer

    def setServiceParent(self, parent):
        offer_observer(parent, self.log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        # a port in use: one line, with what to do; then where it serves
        start_listening(self, super().privilegedStartService, self.log, "izreg edge")

    def startService(self) -> None:
        from izreg.edge.cache import EdgeCache
        from izreg.edge.pins import Pinner
        from izreg.edge.proxy import EdgeAPI
        from izreg.edge.reports import Reporter
        from izreg.edge.upstream import Upstream
        from izreg.http.limits import BodyBudget

        config = self.config
        self.cache = EdgeCache(config.cache_dir, config.cache_size, config.lmdb_map_size)
        removed = self.cache.clean()
        upstream = Upstream(self.reactor, config.upstream, self.policy, config.connect_timeout, config.response_timeout)
        self.reporter = Reporter(self.cache, upstream, self.reactor.seconds)
        self.api.bind(upstream, self.cache, self.reporter, self.reactor.seconds, config.max_manifest_size,
                      BodyBudget(config.response_memory, setting="edge.response_memory", holder="the edge"))
        self.pinner = Pinner(self.api, config.pin)
        self.pinner.adopt_config_pins()
        if self.metrics is not None:
            self.metrics.watch(self.api, self.pinner)
        self.log.info("izreg edge cache at {root}: {total} of {limit} bytes{removed}, upstream {upstream}",
                      root=self.cache.root, total=self.cache.total, limit=self.cache.limit, upstream=config.upstream,
                      removed=f", removed {plural(removed, 'stray file')}" if removed else "")
        lapsed = self.policy.validity_problem(
            datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc))
        if lapsed is not None:
            self.log.warn("{problem}", problem=lapsed)
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        if self.site.readers is not None:
            self.site.readers.stop()
        if self.reporter is not None:
            yield self.reporter.flush_writes()
        if self.api is not None and self.api.upstream is not None:
            yield self.api.upstream.close()
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def make_edge(config: EdgeConfig, reactor, policy, twistd_options=None):
    """The edge's service tree; C{twistd_options}: twistd's top-level options (where it logs), or C{None}."""
    from izreg.edge.proxy import EdgeAPI, EdgeSite
    from izreg.http.limits import SlowReaders
    from izreg.http.plain import RefuseTLSFactory
    from izreg.service.logs import LogSetup
    from izreg.service.tree import AfterFirstInterval, Listener, Timer

    api = EdgeAPI()
    metrics = None
    if config.metrics_listen:  # else nothing counted per request
        from izreg.edge.metrics import EdgeMetrics

        metrics = EdgeMetrics()
    site = EdgeSite(api.resource(), readers=SlowReaders(reactor, config.send_timeout, setting="edge.send_timeout"),
                    metrics=metrics)
    observer = LogSetup("text", config.log_level).for_twistd(twistd_options)
    top = EdgeService(config, policy, reactor, api, site, log_observer=observer, metrics=metrics)
    for description in config.listen:
        Listener(serverFromString(reactor, description), RefuseTLSFactory(site),
                 "--listen or [edge] listen").setServiceParent(top)
    if metrics is not None:
        from izreg.service.metrics import ScrapeSite

        for description in config.metrics_listen:
            scrapes = ScrapeSite(metrics.resource(reactor, reactor.getThreadPool()))
            Listener(serverFromString(reactor, description), scrapes, "--metrics-listen or [edge] metrics_listen",
                     "metrics").setServiceParent(top)
    Timer(config.pin_refresh_interval, lambda: defer.ensureDeferred(top.pinner.refresh()), reactor).setServiceParent(top)
    # pins added by izreg-edge while the edge runs: fetched within seconds, not at the next refresh
    AfterFirstInterval(NEW_PIN_CHECK, lambda: defer.ensureDeferred(top.pinner.fetch_new()), reactor).setServiceParent(top)
    Timer(config.report_interval, lambda: defer.ensureDeferred(top.reporter.send()), reactor).setServiceParent(top)
    if config.upstream_check_interval:
        # /healthz follows the registry when nothing else asks it (a request only when no other was made)
        check = Timer(config.upstream_check_interval, lambda: defer.ensureDeferred(top.api.upstream.check()), reactor)
        check.setName("upstream-check")
        check.setServiceParent(top)
    return top
