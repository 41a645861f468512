# -*- test-case-name: tests.service.test_config -*-
"""
Configuration: defaults, a TOML file, then command-line overrides, into one
frozen L{Config}. Every key is listed in L{FIELDS}; ``etc/izreg.toml``
documents each one. Unknown keys and wrong types are errors (one clear line).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping


class ConfigError(Exception):
    """A bad config file or option; its message is one line for the user."""


@dataclass(frozen=True)
class Config:
    data_dir: str = "izreg-data"
    listen: tuple[str, ...] = ("tcp:5000:interface=127.0.0.1",)
    delete_enabled: bool = True
    lmdb_map_size: int = 64 * 1024**3
    max_manifest_size: int = 4 * 1024 * 1024
    upload_ttl: int = 24 * 3600
    upload_expiry_interval: int = 3600
    chunk_min_length: int = 64 * 1024
    token_service: bool = False
    token_ttl: int = 3600
    #: the realm of the Bearer challenge (the token endpoint's URL) as configured, never built from the Host
    token_realm: str | None = None
    auth_failure_limit: int = 10
    auth_failure_window: int = 60
    tls_listen: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    device_ca: tuple[str, ...] = ()
    device_crl: str | None = None
    device_crl_interval: int = 10
    # threads that run OpenSSL's handshake steps (izreg.service.tlsthreads); 0: on the reactor (the default:
    # faster on a quiet 2-CPU machine, docs/benchmark.md), None: one per CPU
    tls_handshake_threads: int | None = 0
    # TLS connections in their handshake at once (each holds ~66 KiB of OpenSSL state; others wait without it, 0: no
    # cap) and the seconds a handshake may take once admitted (0: no limit) (izreg.service.tls.admission)
    tls_max_handshakes: int = 64
    tls_handshake_timeout: int = 10
    # connections waiting for a handshake slot at most (0: no limit), and the prefixes by which client addresses
    # share the slots (izreg.core.netgroup)
    tls_max_waiting: int = 1000
    tls_group_ipv4_prefix: int = 32
    tls_group_ipv6_prefix: int = 64
    device_account_field: str = "OU"
    device_id_field: str = "CN"
    pull_flush_interval: int = 5
    storage_backend: str = "filesystem"
    # upload bytes written past the page cache (O_DIRECT) where the file system allows it; fsync before every 201 either way
    direct_writes: bool = True
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)  # never in a log line
    s3_redirect: bool = False
    s3_redirect_ttl: int = 300
    s3_threads: int = 16
    s3_queue_timeout: int = 10  # seconds an S3 call may wait for a free S3 thread (then 503), like the database's
    s3_read_timeout: int = 60  # botocore's own default: per socket read, so a slow transfer is not cut
    s3_writer_timeout: int = 5  # an S3 call made while the index's writer is held: one try, this long at most
    # /readyz fails while the bucket does not answer (off: nodes stay in the balancer for what needs no S3)
    s3_ready_check: bool = True
    # [connections] and limits.body_memory: what a client may hold before it is known (izreg.http.limits)
    body_memory: int = 64 * 1024 * 1024
    # response bodies over 64 KiB held in memory until sent (manifests, tag lists, catalog pages), across connections
    response_memory: int = 256 * 1024 * 1024
    max_connections: int = 1000
    max_connections_per_address: int = 200
    idle_timeout: int = 60
    header_timeout: int = 30
    # seconds a client may read nothing of a blob being sent to it before its connection is closed (0: never)
    send_timeout: int = 60
    body_min_rate: int = 1024
    body_grace: int = 30
    trusted_proxies: tuple[str, ...] = ()
    max_open_uploads: int = 1000
    init: bool = False
    # operations (#14): health, metrics, logs, webhooks
    min_free_disk: str = "0"
    metrics_listen: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    # seconds a stopping server (SIGTERM) lets the requests in progress finish, its listeners closed (0: none)
    drain_timeout: int = 0
    webhook_retry_min: int = 5
    webhook_retry_max: int = 3600
    webhook_max_attempts: int = 30
    webhook_timeout: int = 10
    ui_enabled: bool = True
    # manage (#11): in-use protection of deletes, online garbage collection, retention
    protect_in_use: bool = True
    in_use_window: int = 7 * 24 * 3600
    gc_interval: int = 3600
    gc_grace: int = 3600
    untagged_after: int = 0
    # [audit]: how long audit records are kept (0: forever), pruned at each sweep
    audit_keep_days: int = 0
    audit_max_entries: int = 0
    # [metadata] (#16): where the index, accounts, keys, devices, audit and webhooks live
    metadata_backend: str = "lmdb"
    metadata_dsn: str | None = field(default=None, repr=False)  # may hold a password: never in a log line
    #: the secrets (their keys) the config file holds while every user may read it (L{readable_secrets})
    exposed_secrets: tuple[str, ...] = ()
    metadata_pool_size: int = 8
    # [metadata] timeouts and TCP keepalives of the database connections (seconds; 0: no limit)
    metadata_statement_timeout: int = 5
    metadata_lock_timeout: int = 2
    metadata_long_statement_timeout: int = 600
    metadata_keepalives_idle: int = 30
    metadata_keepalives_interval: int = 10
    metadata_keepalives_count: int = 3
    # [metadata] seconds a database call may take before its connection is dropped (a frozen or cut-off server)
    metadata_query_timeout: int = 30

    def check(self) -> "Config":
        """Cross-field rules; raise L{ConfigError}."""
        if self.tls_listen and not (self.tls_cert and self.tls_key):
            raise ConfigError("--tls-listen needs --tls-cert and --tls-key (tls.cert, tls.key)")
        if (self.device_ca or self.device_crl) and not self.tls_listen:
            raise ConfigError("--device-ca and --device-crl need a TLS listener (--tls-listen)")
        if self.device_crl and not self.device_ca:
            raise ConfigError("--device-crl needs --device-ca")
        if self.device_crl_interval < 1:
            raise ConfigError("tls.device_crl_interval must be at least 1 second")
        if self.tls_handshake_threads is not None and not 0 <= self.tls_handshake_threads <= 64:
            raise ConfigError("tls.handshake_threads must be between 0 and 64")
        _check_group_prefixes(self)
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"server.trusted_proxies: {network!r} is not an IP address or network") from None
        if self.token_ttl < 60:
            raise ConfigError("auth.token_ttl must be at least 60 seconds")
        _check_token_realm(self)
        if self.response_memory < self.max_manifest_size:
            # else a manifest izreg accepted could never be served: every GET of it a 503
            raise ConfigError(f"limits.response_memory ({self.response_memory}) must be at least"
                              f" limits.max_manifest_size ({self.max_manifest_size})")
        if self.storage_backend not in ("filesystem", "s3"):
            raise ConfigError(f"storage.backend must be \"filesystem\" or \"s3\", not {self.storage_backend!r}")
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ConfigError("storage.backend = \"s3\" needs storage.s3.bucket")
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise ConfigError("storage.s3.access_key_id and storage.s3.secret_access_key go together")
        if self.s3_threads < 1 or not 1 <= self.s3_redirect_ttl <= 7 * 24 * 3600:
            raise ConfigError("storage.s3.threads must be at least 1 and storage.s3.redirect_ttl 1 s to 7 days")
        _check_timeouts(self)
        _check_devices(self)
        _check_operations(self)
        _check_metadata(self)
        return self


#: (section, key) in the TOML file -> (Config field, type)
FIELDS: dict[tuple[str, str], tuple[str, type]] = {
    ("server", "data_dir"): ("data_dir", str),
    ("server", "listen"): ("listen", list),
    ("storage", "delete_enabled"): ("delete_enabled", bool),
    ("storage", "lmdb_map_size"): ("lmdb_map_size", int),
    ("limits", "max_manifest_size"): ("max_manifest_size", int),
    ("uploads", "ttl"): ("upload_ttl", int),
    ("uploads", "expiry_interval"): ("upload_expiry_interval", int),
    ("uploads", "chunk_min_length"): ("chunk_min_length", int),
    ("auth", "token_service"): ("token_service", bool),
    ("auth", "token_ttl"): ("token_ttl", int),
    ("auth", "token_realm"): ("token_realm", str),
    ("auth", "failure_limit"): ("auth_failure_limit", int),
    ("auth", "failure_window"): ("auth_failure_window", int),
    ("tls", "listen"): ("tls_listen", tuple),
    ("tls", "cert"): ("tls_cert", str),
    ("tls", "key"): ("tls_key", str),
    ("tls", "device_ca"): ("device_ca", tuple),
    ("tls", "device_crl"): ("device_crl", str),
    ("tls", "device_crl_interval"): ("device_crl_interval", int),
    ("tls", "handshake_threads"): ("tls_handshake_threads", int),
    ("tls", "max_handshakes"): ("tls_max_handshakes", int),
    ("tls", "handshake_timeout"): ("tls_handshake_timeout", int),
    ("tls", "max_waiting"): ("tls_max_waiting", int),
    ("tls", "group_ipv4_prefix"): ("tls_group_ipv4_prefix", int),
    ("tls", "group_ipv6_prefix"): ("tls_group_ipv6_prefix", int),
    ("devices", "account_field"): ("device_account_field", str),
    ("devices", "device_id_field"): ("device_id_field", str),
    ("devices", "pull_flush_interval"): ("pull_flush_interval", int),
    ("storage", "backend"): ("storage_backend", str),
    ("storage", "direct_writes"): ("direct_writes", bool),
    ("storage.s3", "bucket"): ("s3_bucket", str),
    ("storage.s3", "endpoint_url"): ("s3_endpoint_url", str),
    ("storage.s3", "region"): ("s3_region", str),
    ("storage.s3", "prefix"): ("s3_prefix", str),
    ("storage.s3", "access_key_id"): ("s3_access_key_id", str),
    ("storage.s3", "secret_access_key"): ("s3_secret_access_key", str),
    ("storage.s3", "redirect"): ("s3_redirect", bool),
    ("storage.s3", "redirect_ttl"): ("s3_redirect_ttl", int),
    ("storage.s3", "threads"): ("s3_threads", int),
    ("storage.s3", "read_timeout"): ("s3_read_timeout", int),
    ("storage.s3", "ready_check"): ("s3_ready_check", bool),
    ("storage.s3", "queue_timeout"): ("s3_queue_timeout", int),
    ("storage.s3", "writer_timeout"): ("s3_writer_timeout", int),
    ("limits", "body_memory"): ("body_memory", int),
    ("limits", "response_memory"): ("response_memory", int),
    ("connections", "max_connections"): ("max_connections", int),
    ("connections", "max_per_address"): ("max_connections_per_address", int),
    ("connections", "idle_timeout"): ("idle_timeout", int),
    ("connections", "header_timeout"): ("header_timeout", int),
    ("connections", "send_timeout"): ("send_timeout", int),
    ("connections", "body_min_rate"): ("body_min_rate", int),
    ("connections", "body_grace"): ("body_grace", int),
    ("server", "trusted_proxies"): ("trusted_proxies", tuple),
    ("uploads", "max_open_per_account"): ("max_open_uploads", int),
    ("server", "init"): ("init", bool),
    ("server", "min_free_disk"): ("min_free_disk", str),
    ("server", "log_format"): ("log_format", str),
    ("server", "log_level"): ("log_level", str),
    ("server", "drain_timeout"): ("drain_timeout", int),
    ("metrics", "listen"): ("metrics_listen", tuple),
    ("webhooks", "retry_min"): ("webhook_retry_min", int),
    ("webhooks", "retry_max"): ("webhook_retry_max", int),
    ("webhooks", "max_attempts"): ("webhook_max_attempts", int),
    ("webhooks", "timeout"): ("webhook_timeout", int),
    ("ui", "enabled"): ("ui_enabled", bool),
    ("delete", "protect_in_use"): ("protect_in_use", bool),
    ("delete", "in_use_window"): ("in_use_window", int),
    ("gc", "interval"): ("gc_interval", int),
    ("gc", "grace"): ("gc_grace", int),
    ("retention", "untagged_after"): ("untagged_after", int),
    ("audit", "keep_days"): ("audit_keep_days", int),
    ("audit", "max_entries"): ("audit_max_entries", int),
    ("metadata", "backend"): ("metadata_backend", str),
    ("metadata", "dsn"): ("metadata_dsn", str),
    ("metadata", "pool_size"): ("metadata_pool_size", int),
    ("metadata", "statement_timeout"): ("metadata_statement_timeout", int),
    ("metadata", "lock_timeout"): ("metadata_lock_timeout", int),
    ("metadata", "long_statement_timeout"): ("metadata_long_statement_timeout", int),
    ("metadata", "keepalives_idle"): ("metadata_keepalives_idle", int),
    ("metadata", "keepalives_interval"): ("metadata_keepalives_interval", int),
    ("metadata", "keepalives_count"): ("metadata_keepalives_count", int),
    ("metadata", "query_timeout"): ("metadata_query_timeout", int),
}

LOG_FORMATS = ("text", "json")
#: the lowest level logged, least severe first: twisted.logger's level names (izreg.service.logs.LEVELS maps them)
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _check_group_prefixes(config: Config) -> None:
    """[tls] group_ipv4_prefix, group_ipv6_prefix: a prefix length, and not 0 (elsewhere 0 means "off")."""
    for key, value, bits, default in (("group_ipv4_prefix", config.tls_group_ipv4_prefix, 32, "32: each address"),
                                      ("group_ipv6_prefix", config.tls_group_ipv6_prefix, 128, "64: each /64")):
        if not 1 <= value <= bits:
            why = (": 0 would put every client in one group, which holds at most half of tls.max_handshakes"
                   if value == 0 else "")
            raise ConfigError(f"tls.{key} must be a prefix length from 1 to {bits} ({default}), not {value}{why}")


def _check_token_realm(config: Config) -> None:
    """[auth] token_realm: an absolute http(s) URL, quotable in the challenge, and only with the token service."""
    import urllib.parse

    realm = config.token_realm
    if realm is None:
        return
    if not config.token_service:
        raise ConfigError("auth.token_realm is set but auth.token_service is off: set token_service = true")
    try:
        parts = urllib.parse.urlsplit(realm)
        parts.port  # noqa: B018 - a port that is not a number raises
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or parts.username or parts.password
            or any(c in realm for c in '"\\') or not realm.isprintable() or not realm.isascii() or " " in realm):
        # a password in it would go to the log: all up to the realm's last @ (a password typed as it is may
        # hold / ? # or a space, which end the authority of a URL but not the password a user meant)
        shown = re.sub(r"//.*@", "//...@", realm, flags=re.DOTALL)
        raise ConfigError(f"auth.token_realm must be an absolute http(s) URL (no user:password@, query or"
                          f" fragment) such as \"https://registry.example.net/v2/token\", not {shown!r}")


#: the longest timeout a setting may have, seconds: a day. Longer ones failed later and named another thing
#: (PostgreSQL's statement_timeout and libpq's tcp_user_timeout are milliseconds in an int: 24.8 days;
#: botocore's read timeout, past some 290 years: "timestamp too large", as if the bucket were unreachable)
MAX_TIMEOUT = 86400


def _check_timeouts(config: Config) -> None:
    """The S3 and database timeouts, each named with its value: 0 for S3's (no "no limit" there), over a day for any."""
    for key, value, least in (("storage.s3.read_timeout", config.s3_read_timeout, 1),
                              ("storage.s3.queue_timeout", config.s3_queue_timeout, 1),
                              ("storage.s3.writer_timeout", config.s3_writer_timeout, 1),
                              ("metadata.statement_timeout", config.metadata_statement_timeout, 0),
                              ("metadata.lock_timeout", config.metadata_lock_timeout, 0),
                              ("metadata.long_statement_timeout", config.metadata_long_statement_timeout, 0),
                              ("metadata.query_timeout", config.metadata_query_timeout, 0)):
        if not least <= value <= MAX_TIMEOUT:
            raise ConfigError(f"{key} must be {'1' if least else '0 (no limit)'} to {MAX_TIMEOUT}"
                              f" seconds (a day), not {value}")


def _check_devices(config: Config) -> None:
    from izreg.auth.devices import SubjectFields

    try:
        SubjectFields.parse(config.device_account_field, config.device_id_field)
    except ValueError as e:
        raise ConfigError(f"devices.account_field, devices.device_id_field: {e}") from None


METADATA_BACKENDS = ("lmdb", "postgresql")
#: the DSN of the metadata database when the config names none (izreg.storage.pg.dsn_from)
ENV_DATABASE_URL = "IZREG_DATABASE_URL"


def _check_metadata(config: Config) -> None:
    """[metadata]: the backend's name and pool; a DSN (here or in the environment) for PostgreSQL."""
    if config.metadata_backend not in METADATA_BACKENDS:
        raise ConfigError(f"metadata.backend must be \"lmdb\" or \"postgresql\", not {config.metadata_backend!r}")
    if config.metadata_pool_size < 1:
        raise ConfigError("metadata.pool_size must be at least 1")
    # Linux's most (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT): past it libpq's "setsockopt(TCP_KEEPIDLE)
    # failed: Invalid argument", named nowhere as the setting, after the pool's connect wait
    for key, value, most in (("keepalives_idle", config.metadata_keepalives_idle, 32767),
                             ("keepalives_interval", config.metadata_keepalives_interval, 32767),
                             ("keepalives_count", config.metadata_keepalives_count, 127)):
        if not 1 <= value <= most:
            raise ConfigError(f"metadata.{key} must be 1 to {most}, not {value}")
    query, statement = config.metadata_query_timeout, config.metadata_statement_timeout
    if query and statement and query <= statement:
        raise ConfigError(f"metadata.query_timeout must be 0 (no limit) or more than statement_timeout ({statement} s),"
                          f" not {query}: the server's own timeout, which keeps the connection, must come first")
    if config.metadata_backend == "postgresql":
        if not (config.metadata_dsn or os.environ.get(ENV_DATABASE_URL)):
            raise ConfigError(f"metadata.backend = \"postgresql\" needs metadata.dsn or ${ENV_DATABASE_URL}")
        dsn = config.metadata_dsn or os.environ[ENV_DATABASE_URL]
        if not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
            raise ConfigError("metadata.dsn must be a postgresql:// URL or a libpq key=value string")
    elif config.metadata_dsn:
        raise ConfigError("metadata.dsn is set but metadata.backend is \"lmdb\": set backend = \"postgresql\"")


def _check_operations(config: Config) -> None:
    from izreg.storage.capacity import parse_floor

    try:
        parse_floor(config.min_free_disk)
    except ValueError as e:
        raise ConfigError(f"server.min_free_disk: {e}") from None
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"server.log_format must be one of {', '.join(LOG_FORMATS)}, not {config.log_format!r}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"server.log_level must be one of {', '.join(LOG_LEVELS)}, not {config.log_level!r}")
    if not 1 <= config.webhook_retry_min <= config.webhook_retry_max:
        raise ConfigError("webhooks.retry_min must be at least 1 and at most webhooks.retry_max")
    if config.webhook_max_attempts < 1 or config.webhook_timeout < 1:
        raise ConfigError("webhooks.max_attempts and webhooks.timeout must be at least 1")


def _check(name: str, value: Any, kind: type) -> Any:
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"{name} must be a non-negative integer, not {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if kind is str and (not isinstance(value, str) or not value):
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    if kind in (list, tuple):
        # list: at least one string; tuple: any number of strings
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name} must be a list of strings, not {value!r}")
        if kind is list and not value:
            raise ConfigError(f"{name} must name at least one endpoint")
        return tuple(value)
    return value


def _unknown(source: str, name: str, note: str = "") -> ConfigError:
    """An unknown key's error, with what a typo likely meant (C{server.listne}: C{server.listen})."""
    sections = sorted({section for section, _ in FIELDS})
    close = difflib.get_close_matches(name, [f"{section}.{key}" for section, key in FIELDS], n=1, cutoff=0.8)
    if not close and name.partition(".")[0] not in sections:
        close = difflib.get_close_matches(name.partition(".")[0], sections, n=1, cutoff=0.8)
        close = [f"[{close[0]}]"] if close else []
    hint = f"did you mean {close[0]}? " if close and close[0] != name else ""
    return ConfigError(f"{source}: unknown config key {name!r} ({note}{hint}etc/izreg.toml lists every key)")


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    """TOML text -> Config field values (validated)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    values: dict[str, Any] = {}
    tables = [(section, table) for section, table in document.items()]
    for section, table in tables:
        if not isinstance(table, dict):
            raise _unknown(source, section, "keys go in a [section]; ")
        for key, value in table.items():
            if isinstance(value, dict):  # a sub-table such as [storage.s3]
                tables.append((f"{section}.{key}", value))
                continue
            spec = FIELDS.get((section, key))
            if spec is None:
                raise _unknown(source, f"{section}.{key}")
            values[spec[0]] = _check(f"{source}: {section}.{key}", value, spec[1])
    return values


#: the data directory, for the server and the ``izreg`` command alike (between the file and the options)
ENV_DATA_DIR = "IZREG_DATA_DIR"


def readable_secrets(path: str, values: dict[str, Any]) -> tuple[str, ...]:
    """
    The keys of the secrets in C{values} (read from the file at C{path}) when
    every user of the machine may read that file (a config installed 0644):
    the S3 secret key, a DSN with a password. Nothing when the file is private.
    """
    try:
        if not os.stat(path).st_mode & 0o004:
            return ()
    except OSError:
        return ()
    found = []
    if values.get("s3_secret_access_key"):
        found.append("storage.s3.secret_access_key")
    if _has_password(values.get("metadata_dsn") or ""):
        found.append("metadata.dsn (a password)")
    return tuple(found)


def _has_password(dsn: str) -> bool:
    """Whether a libpq DSN (URL or key=value) holds a password."""
    if "://" in dsn:
        from urllib.parse import parse_qs, urlsplit

        try:
            parts = urlsplit(dsn)
            return bool(parts.password) or "password" in parse_qs(parts.query)
        except ValueError:
            return True  # unreadable: say so rather than miss one
    return re.search(r"(?:^|\s)password\s*=", dsn) is not None


def load(path: str | None, overrides: dict[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """
    Defaults <- file at C{path} <- C{$IZREG_DATA_DIR} <- C{overrides}
    (command-line values that were given). Both ``twistd izreg server`` and
    the ``izreg`` command load their settings here.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        values.update(parse_toml(text, path))
        values["exposed_secrets"] = readable_secrets(path, values)
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DATA_DIR):
        values["data_dir"] = environ[ENV_DATA_DIR]
    kinds = {spec[0]: spec[1] for spec in FIELDS.values()}
    for name, value in overrides.items():
        if value is not None:
            values[name] = _check(f"--{name.replace('_', '-')}", value, kinds.get(name, type(value)))
    return dataclasses.replace(Config(), **values).check()
