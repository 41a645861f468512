# -*- test-case-name: tests.service.test_tap -*-
"""
``twistd izreg``: command-line options and C{makeService}.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

from twisted.application import internet, strports
from twisted.internet import defer
from twisted.python import usage

from izreg.service.config import Config, ConfigError, load


class ServerOptions(usage.Options):
    synopsis = "[--config FILE] [--data-dir DIR] [--listen ENDPOINT ...]"
    longdesc = "Run the registry. Command-line options override the config file (see etc/izreg.toml)."
    optParameters = [
        ["config", "c", None, "TOML config file (every option can be set there)"],
        ["data-dir", "d", None, "data directory (default: ./izreg-data)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on, repeatable (default: tcp:5000:interface=127.0.0.1)"""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        try:
            self.config = load(self["config"], {"data_dir": self["data-dir"], "listen": self["listen"] or None})
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class Options(usage.Options):
    synopsis = "server [options]"
    subCommands = [["server", None, ServerOptions, "run the registry"]]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command: server")


def make_server(config: Config, reactor):
    from izreg.http.app import RegistryAPI
    from izreg.http.bodies import RegistrySite
    from izreg.service.services import RegistryService

    api = RegistryAPI(chunk_min_length=config.chunk_min_length)
    site = RegistrySite(api.resource(), api.body_for)
    top = RegistryService(config, api, reactor)
    for description in config.listen:
        listener = strports.service(description, site)
        listener.setServiceParent(top)
    timer = internet.TimerService(config.upload_expiry_interval, lambda: defer.ensureDeferred(top.expire_uploads()))
    timer.clock = reactor
    timer.setServiceParent(top)
    top.site = site
    return top


def makeService(options: Options):
    from twisted.internet import reactor

    return make_server(options.subOptions.config, reactor)
