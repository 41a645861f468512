"""Configuration: defaults, the TOML file, command-line overrides, and etc/izreg.toml."""

from __future__ import annotations

import os
import re

import pytest

from izreg.service.config import FIELDS, Config, ConfigError, load, parse_toml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "etc", "izreg.toml")


def test_the_documented_example_is_the_defaults():
    """etc/izreg.toml documents every key with its default value."""
    assert load(EXAMPLE, {}) == Config()


def test_the_documented_example_names_every_key():
    text = open(EXAMPLE).read()
    sections = {m.group(1): m.start() for m in re.finditer(r"^\[([\w.]+)\]", text, re.M)}
    for section, key in FIELDS:
        assert section in sections, section
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"{section}.{key} is not documented in etc/izreg.toml"


def test_file_then_command_line(tmp_path):
    path = tmp_path / "izreg.toml"
    path.write_text('[server]\ndata_dir = "/srv/izreg"\nlisten = ["tcp:5001"]\n[uploads]\nttl = 60\n')
    config = load(str(path), {"listen": ("tcp:6000", "tcp:6001"), "data_dir": None})
    assert config.data_dir == "/srv/izreg"
    assert config.listen == ("tcp:6000", "tcp:6001")
    assert config.upload_ttl == 60


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nfoo = 1\n", "unknown config key 'server.foo'"),
        ("[nope]\nx = 1\n", "unknown config key 'nope.x'"),
        ("top = 1\n", "unknown config key 'top'"),
        ("[server]\nlisten = []\n", "server.listen must name at least one endpoint"),
        ("[server]\nlisten = [1]\n", "server.listen must be a list of strings"),
        ("[server]\ndata_dir = 3\n", "server.data_dir must be a non-empty string"),
        ("[uploads]\nttl = -1\n", "uploads.ttl must be a non-negative integer"),
        ("[uploads]\nttl = true\n", "uploads.ttl must be a non-negative integer"),
        ("[audit]\nkeep_days = -1\n", "audit.keep_days must be a non-negative integer"),
        ("[storage]\ndelete_enabled = 1\n", "storage.delete_enabled must be true or false"),
        ("[server\n", "invalid TOML"),
        # a mistyped key is told the key it likely meant
        ("[server]\nlistne = 1\n", "unknown config key 'server.listne' (did you mean server.listen? etc/izreg.toml"),
        ("[connection]\nsend_timeout = 60\n", "(did you mean connections.send_timeout? "),
        ("[servr]\nlisten = ['x']\n", "(did you mean server.listen? "),
        ("[connection]\nx = 1\n", "'connection.x' (did you mean [connections]? "),
        ("[storage.s3]\nbuckt = 'b'\n", "(did you mean storage.s3.bucket? "),
        ("[server]\nfoo = 1\n", "unknown config key 'server.foo' (etc/izreg.toml lists every key)"),
        ("server = 1\n", "unknown config key 'server' (keys go in a [section]; etc/izreg.toml lists every key)"),
    ],
)
def test_bad_files_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError) as e:
        parse_toml(text, "f.toml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tls_listen": ("tcp:5443",)}, "--tls-listen needs --tls-cert and --tls-key"),
        ({"device_ca": ("ca.pem",)}, "need a TLS listener"),
        ({"tls_listen": ("tcp:1",), "tls_cert": "c", "tls_key": "k", "device_crl": "x.crl"}, "--device-crl needs --device-ca"),
        ({"response_memory": 1000}, "limits.response_memory (1000) must be at least limits.max_manifest_size (4194304)"),
    ],
)
def test_cross_field_rules(overrides, message):
    with pytest.raises(ConfigError) as e:
        load(None, overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("realm", [
    "registry.example.net/v2/token",  # not absolute
    "ftp://registry.example.net/v2/token",
    "https:///v2/token",  # no host
    "https://registry.example.net:https/v2/token",
    "https://user:pw@registry.example.net/v2/token",
    "https://registry.example.net/v2/token?service=x",  # the client adds its query
    'https://registry.example.net/v2/"token',  # inside the challenge's quoted string
    "https://registry.example.net/v2/token\r\nX-Evil: 1",
])
def test_a_token_realm_that_is_no_absolute_http_url_is_refused(realm):
    with pytest.raises(ConfigError, match="auth.token_realm must be an absolute http\\(s\\) URL") as e:
        load(None, {"token_service": True, "token_realm": realm})
    assert "\n" not in str(e.value).replace("\\n", "")


@pytest.mark.parametrize("realm", ["https://ci:s3cret@registry.example.net/v2/token",
                                   "https://ci:s3cret@registry.example.net:https/v2/token",  # urlsplit fails
                                   "https://ci:s3cret@[::1/v2/token",
                                   # a password holding what ends a URL's authority: / ? # (and a space)
                                   "https://ci:s3cret/1@registry.example.net/v2/token",
                                   "https://ci:s3cret?1@registry.example.net/v2/token",
                                   "https://ci:s3cret#1@registry.example.net/v2/token",
                                   "https://ci:s3cret 1@registry.example.net/v2/token"])
def test_a_token_realm_with_a_password_is_refused_without_it(realm):
    # the message echoed the URL, password and all, to the log
    with pytest.raises(ConfigError, match="no user:password@") as e:
        load(None, {"token_service": True, "token_realm": realm})
    assert "s3cret" not in str(e.value) and "//...@" in str(e.value)


@pytest.mark.parametrize("fields, message", [
    # one message named both S3 timeouts, and neither value
    ({"s3_read_timeout": 0}, "storage.s3.read_timeout must be 1 to 86400 seconds (a day), not 0"),
    ({"s3_queue_timeout": 0}, "storage.s3.queue_timeout must be 1 to 86400 seconds (a day), not 0"),
    # too long: botocore's "timestamp too large" as if the bucket were unreachable
    ({"s3_read_timeout": 10**11}, "storage.s3.read_timeout must be 1 to 86400 seconds"),
    ({"s3_queue_timeout": 86401}, "storage.s3.queue_timeout must be 1 to 86400 seconds"),
    ({"s3_writer_timeout": 0}, "storage.s3.writer_timeout must be 1 to 86400 seconds (a day), not 0"),
    # too long: PostgreSQL's and libpq's errors, naming statement_timeout or tcp_user_timeout, after 15 s
    ({"metadata_query_timeout": 3_000_000}, "metadata.query_timeout must be 0 (no limit) to 86400 seconds"),
    ({"metadata_statement_timeout": 10**7, "metadata_query_timeout": 0},
     "metadata.statement_timeout must be 0 (no limit) to 86400"),
    ({"metadata_lock_timeout": 10**7}, "metadata.lock_timeout must be 0 (no limit) to 86400 seconds"),
    ({"metadata_long_statement_timeout": 10**7}, "metadata.long_statement_timeout must be 0 (no limit) to 86400"),
    # past Linux's most: libpq's "setsockopt(TCP_KEEPIDLE) failed: Invalid argument" after 11 s
    ({"metadata_keepalives_idle": 100000}, "metadata.keepalives_idle must be 1 to 32767, not 100000"),
    ({"metadata_keepalives_interval": 0}, "metadata.keepalives_interval must be 1 to 32767, not 0"),
    ({"metadata_keepalives_count": 128}, "metadata.keepalives_count must be 1 to 127, not 128"),
])
def test_a_timing_setting_out_of_range_is_named_with_its_value(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, fields, {})


def test_the_longest_timeouts_are_accepted():
    config = load(None, {"s3_read_timeout": 86400, "s3_queue_timeout": 86400, "metadata_query_timeout": 86400,
                         "metadata_statement_timeout": 86399, "metadata_lock_timeout": 86400,
                         "metadata_long_statement_timeout": 86400}, {})
    assert config.metadata_query_timeout == config.s3_read_timeout == 86400


def test_a_token_realm_needs_the_token_service():
    with pytest.raises(ConfigError, match="token_realm is set but auth.token_service is off"):
        load(None, {"token_realm": "https://registry.example.net/v2/token"})
    config = load(None, {"token_service": True, "token_realm": "https://registry.example.net:8443/v2/token"})
    assert config.token_realm == "https://registry.example.net:8443/v2/token"


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "missing.toml"), {})
    assert str(e.value).startswith("cannot read config file") and "\n" not in str(e.value)


def test_the_data_dir_from_the_environment_sits_between_the_file_and_the_options(tmp_path):
    path = tmp_path / "izreg.toml"
    path.write_text('[server]\ndata_dir = "from-file"\n')
    assert load(str(path), {}, {}).data_dir == "from-file"
    assert load(str(path), {}, {"IZREG_DATA_DIR": "from-env"}).data_dir == "from-env"
    assert load(str(path), {"data_dir": "from-option"}, {"IZREG_DATA_DIR": "from-env"}).data_dir == "from-option"


@pytest.mark.parametrize("fields", [{"device_account_field": "organisation"},
                                    {"device_account_field": "CN", "device_id_field": "CN"}])
def test_device_subject_fields_are_checked_with_the_config(fields):
    with pytest.raises(ConfigError, match="devices.account_field, devices.device_id_field: "):
        load(None, fields, {})


def test_direct_writes_is_on_by_default_and_a_storage_setting():
    assert Config().direct_writes is True
    assert parse_toml("[storage]\ndirect_writes = false\n") == {"direct_writes": False}


def test_handshakes_run_on_the_reactor_unless_threads_are_asked_for():
    assert Config().tls_handshake_threads == 0
    assert parse_toml("[tls]\nhandshake_threads = 2\n") == {"tls_handshake_threads": 2}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("group_ipv4_prefix", 33, "tls.group_ipv4_prefix must be a prefix length from 1 to 32 (32: each address), not 33"),
        ("group_ipv6_prefix", 129, "tls.group_ipv6_prefix must be a prefix length from 1 to 128 (64: each /64), not 129"),
        ("group_ipv4_prefix", 0, "not 0: 0 would put every client in one group, which holds at most half of tls.max_handshakes"),
        ("group_ipv6_prefix", 0, "tls.group_ipv6_prefix must be a prefix length from 1 to 128"),
    ],
)
def test_client_group_prefixes_name_the_key_its_range_and_the_value(tmp_path, key, value, message):
    """The wrong key alone, with its range and value; 0 (elsewhere 'off') says what it would do."""
    path = tmp_path / "izreg.toml"
    path.write_text(f"[tls]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load(str(path), {}, {})
    assert message in str(e.value)
    other = {"group_ipv4_prefix": "group_ipv6_prefix", "group_ipv6_prefix": "group_ipv4_prefix"}[key]
    assert other not in str(e.value)
    assert load(None, {f"tls_{key}": 1}, {}) == Config(**{f"tls_{key}": 1})



@pytest.mark.parametrize("text, exposed", [
    ('[storage.s3]\nbucket = "b"\naccess_key_id = "AK"\nsecret_access_key = "SK"\n', ("storage.s3.secret_access_key",)),
    ('[metadata]\nbackend = "postgresql"\ndsn = "postgresql://izreg:pw@db/izreg"\n', ("metadata.dsn (a password)",)),
    ('[metadata]\nbackend = "postgresql"\ndsn = "postgresql://izreg@db/izreg?password=pw"\n', ("metadata.dsn (a password)",)),
    ('[metadata]\nbackend = "postgresql"\ndsn = "host=db user=izreg password=pw"\n', ("metadata.dsn (a password)",)),
    ('[metadata]\nbackend = "postgresql"\ndsn = "postgresql://izreg@db/izreg?sslmode=verify-full"\n', ()),
    ('[server]\ndata_dir = "/srv/izreg"\n', ()),
])
def test_secrets_in_a_config_file_every_user_may_read_are_named(tmp_path, text, exposed):
    # docs/operations.rst installs the config 0644: an S3 secret key or a DB password in it was readable by all
    path = tmp_path / "izreg.toml"
    path.write_text(text)
    os.chmod(path, 0o644)
    assert load(str(path), {}).exposed_secrets == exposed
    os.chmod(path, 0o640)
    assert load(str(path), {}).exposed_secrets == ()
