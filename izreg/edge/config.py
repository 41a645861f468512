# -*- test-case-name: tests.edge.test_config -*-
"""
The edge's settings: defaults, the ``[edge]`` table of a TOML file, then
command-line overrides, into one frozen L{EdgeConfig}. Every key is in
L{FIELDS} and documented in ``etc/izreg-edge.toml``. Other tables of the
file are ignored, so one file may hold both the registry's and the edge's
settings; unknown keys in ``[edge]`` and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from izreg.core.names import NAME_RE, TAG_RE, name_problem
from izreg.service.config import LOG_LEVELS, ConfigError, _check

#: how often (seconds) the running edge looks for pins added by ``izreg-edge pin`` (L{izreg.edge.pins.Pinner.fetch_new})
NEW_PIN_CHECK = 2

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(text: str | int, name: str = "cache_size") -> int:
    """``20GB``, ``512MiB``, ``1000000`` -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{name} must be a size such as 20GB or 512MiB, not {text!r}")
    unit = (match.group(2) or "").upper().rstrip("B")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{name} must be more than 0 bytes")
    return size


def parse_pin(text: str) -> tuple[str, str]:
    """
    ``<account>/<app>:<tag>`` -> (repository, tag). When the name is what is wrong, the error says how
    (L{name_problem}: names are lowercase, with the name to use; else the form of a name).
    """
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag or not TAG_RE.fullmatch(tag):
        raise ConfigError(f"pin {text!r} is not <account id>/<name>:<tag>")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"pin {text!r} is not <account id>/<name>:<tag>: {name_problem(name)}")
    return name, tag


@dataclass(frozen=True)
class EdgeConfig:
    upstream: str | None = None
    upstream_ca: str | None = None
    device_cert: str | None = None
    device_key: str | None = None
    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    # listeners of Prometheus' /metrics (izreg.edge.metrics), as the server's [metrics] listen: none by default
    metrics_listen: tuple[str, ...] = ()
    cache_dir: str = "izreg-edge-cache"
    cache_size: int = 20 * 1000**3
    pin: tuple[str, ...] = ()
    connect_timeout: int = 3
    response_timeout: int = 10
    pin_refresh_interval: int = 300
    report_interval: int = 10
    upstream_check_interval: int = 30  # 0: off (izreg.edge.upstream.Upstream.check)
    lmdb_map_size: int = 4 * 1024**3
    max_manifest_size: int = 4 * 1024 * 1024
    # manifests over 64 KiB fetched from the registry and held until sent to a client, bytes, in all (izreg.http.responses)
    response_memory: int = 256 * 1024 * 1024
    # seconds a client may read nothing of a blob, a manifest over 64 KiB or a relayed answer before it is closed (0: never)
    send_timeout: int = 60
    log_level: str = "info"  # what reaches twistd's log file (izreg.service.logs.LogSetup)

    def check(self) -> "EdgeConfig":
        if not self.upstream:
            raise ConfigError("--upstream is required (edge.upstream): the registry's https:// URL")
        if not re.fullmatch(r"https://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?", self.upstream):
            raise ConfigError(f"--upstream must be https://HOST[:PORT], not {self.upstream!r}")
        if not (self.device_cert and self.device_key):
            raise ConfigError("--device-cert and --device-key are required (edge.device_cert, edge.device_key)")
        if self.connect_timeout < 1 or self.response_timeout < 1:
            raise ConfigError("edge.connect_timeout and edge.response_timeout must be at least 1 second")
        if self.pin_refresh_interval < 1 or self.report_interval < 1:
            raise ConfigError("edge.pin_refresh_interval and edge.report_interval must be at least 1 second")
        if self.response_memory < self.max_manifest_size:
            # else a manifest the edge accepts could never be served on a miss: every GET of it a 503
            raise ConfigError(f"edge.response_memory ({self.response_memory}) must be at least"
                              f" edge.max_manifest_size ({self.max_manifest_size})")
        for pin in self.pin:
            parse_pin(pin)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"edge.log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        return self


#: key of the ``[edge]`` table -> (EdgeConfig field, type); "size" is a size string or a byte count
FIELDS: dict[str, tuple[str, Any]] = {
    "upstream": ("upstream", str),
    "upstream_ca": ("upstream_ca", str),
    "device_cert": ("device_cert", str),
    "device_key": ("device_key", str),
    "listen": ("listen", list),
    "metrics_listen": ("metrics_listen", tuple),
    "cache_dir": ("cache_dir", str),
    "cache_size": ("cache_size", "size"),
    "pin": ("pin", tuple),
    "connect_timeout": ("connect_timeout", int),
    "response_timeout": ("response_timeout", int),
    "pin_refresh_interval": ("pin_refresh_interval", int),
    "report_interval": ("report_interval", int),
    "upstream_check_interval": ("upstream_check_interval", int),
    "lmdb_map_size": ("lmdb_map_size", int),
    "max_manifest_size": ("max_manifest_size", int),
    "response_memory": ("response_memory", int),
    "send_timeout": ("send_timeout", int),
    "log_level": ("log_level", str),
}


def _value(name: str, value: Any, kind: Any) -> Any:
    if kind == "size":
        return parse_size(value, name)
    return _check(name, value, kind)


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    """The ``[edge]`` table of TOML text -> EdgeConfig field values (validated)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    table = document.get("edge", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: edge must be a [edge] table")
    values = {}
    for key, value in table.items():
        spec = FIELDS.get(key)
        if spec is None:
            raise ConfigError(f"{source}: unknown config key 'edge.{key}'")
        values[spec[0]] = _value(f"{source}: edge.{key}", value, spec[1])
    return values


def load(path: str | None, overrides: dict[str, Any]) -> EdgeConfig:
    """Defaults <- the ``[edge]`` table of C{path} <- C{overrides} (options that were given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        values.update(parse_toml(text, path))
    kinds = {spec[0]: spec[1] for spec in FIELDS.values()}
    for name, value in overrides.items():
        if value is not None:
            values[name] = _value(f"--{name.replace('_', '-')}", value, kinds[name])
    return dataclasses.replace(EdgeConfig(), **values).check()
