"""The edge's options and ``[edge]`` table (izreg.edge.config, izreg.edge.service.EdgeOptions)."""

from __future__ import annotations

import pytest

from izreg.edge.config import EdgeConfig, load, parse_pin, parse_size, parse_toml
from izreg.service.config import ConfigError

REQUIRED = {"upstream": "https://registry.example:5443", "device_cert": "c.pem", "device_key": "k.pem"}


def test_defaults_and_overrides():
    config = load(None, dict(REQUIRED, cache_size="512MiB", listen=["tcp:9090"]))
    assert config.listen == ("tcp:9090",) and config.cache_size == 512 * 1024**2
    assert config.cache_dir == "izreg-edge-cache" and load(None, REQUIRED).listen == ("tcp:8080:interface=127.0.0.1",)
    assert (config.send_timeout, config.response_memory) == (60, 256 * 1024**2)


def test_the_edge_table_of_a_file(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('[server]\nlisten = ["tcp:5000"]\n[edge]\nupstream = "https://r:1"\ndevice_cert = "c"\n'
                    'device_key = "k"\ncache_size = "20GB"\npin = ["' + "a" * 32 + '/app:v1"]\n')
    config = load(str(path), {"cache_dir": "/var/cache/edge"})
    assert (config.upstream, config.cache_size, config.pin, config.cache_dir) == (
        "https://r:1", 20 * 1000**3, ("a" * 32 + "/app:v1",), "/var/cache/edge")
    assert config.log_level == "info"
    path.write_text(path.read_text() + 'log_level = "debug"\n')
    assert load(str(path), {}).log_level == "debug"


def test_the_example_config_lists_every_key():
    import os
    import tomllib

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "etc", "izreg-edge.toml"), "rb") as f:
        text = f.read().decode()
    import re

    document = tomllib.loads(re.sub(r"^# (?=[a-z_]+ = )", "", text, flags=re.M))  # commented-out keys too
    from izreg.edge.config import FIELDS

    assert set(document["edge"]) == set(FIELDS)


@pytest.mark.parametrize("overrides, message", [
    ({}, "--upstream is required"),
    ({"upstream": "http://r:1", "device_cert": "c", "device_key": "k"}, "https://"),
    ({"upstream": "https://r:1"}, "--device-cert and --device-key"),
    (dict(REQUIRED, cache_size="lots"), "size"),
    (dict(REQUIRED, pin=["nope:v1"]), "not <account id>/<name>:<tag>: expected <account id: 32 lowercase hex>/<name>"),
    (dict(REQUIRED, pin=["nope"]), r"^pin 'nope' is not <account id>/<name>:<tag>$"),
    (dict(REQUIRED, log_level="verbose"), "edge.log_level must be one of debug, info"),
    (dict(REQUIRED, response_memory=1000), r"edge.response_memory \(1000\) must be at least edge.max_manifest_size"),
    (dict(REQUIRED, send_timeout=-1), "--send-timeout must be a non-negative integer"),
])
def test_bad_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(None, overrides)


def test_a_pin_with_capitals_says_names_are_lowercase_and_the_name_to_use():
    account = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ConfigError) as e:
        load(None, dict(REQUIRED, pin=[f"{account}/MyApp:v1"]))
    assert str(e.value) == (f"pin '{account}/MyApp:v1' is not <account id>/<name>:<tag>: repository names are"
                            f' lowercase (a-z, 0-9 and the separators ".", "_", "-"): use {account}/myapp')
    with pytest.raises(ConfigError, match=r"lowercase .*; expected <account id: 32 lowercase hex>/<name>$"):
        parse_pin(f"{account}/My App:v1")  # no lowercase name to offer
    assert parse_pin(f"{account}/myapp:V1") == (f"{account}/myapp", "V1")  # tags may have capitals


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown config key 'edge.cache'"):
        parse_toml('[edge]\ncache = "x"\n')


def test_sizes():
    assert [parse_size(s) for s in ("1000", "1kB", "1KiB", "1.5GB", "2G", 7)] == [1000, 1000, 1024, 1_500_000_000, 2 * 10**9, 7]
    assert EdgeConfig().cache_size == 20 * 1000**3


def test_the_log_level_help_and_check_name_the_levels_the_logs_know(capsys):
    from izreg.edge.service import EdgeOptions
    from izreg.service.config import LOG_LEVELS
    from izreg.service.logs import LEVELS

    assert tuple(LEVELS) == LOG_LEVELS  # one list: the config's names are the log filter's
    with pytest.raises(SystemExit):
        EdgeOptions().parseOptions(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--log-level= {', '.join(LOG_LEVELS)}: the lowest level logged (default: info)" in help_text
    with pytest.raises(ConfigError, match=", ".join(LOG_LEVELS)):
        load(None, dict(REQUIRED, log_level="loud"))
