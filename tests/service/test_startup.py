"""Start-up and the data directory: --init, --version, the persisted token signing key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from izreg import __version__
from izreg.auth.authenticator import Authenticator
from izreg.auth.failures import FailedAuthentications
from izreg.auth.ratelimit import FailureLimiter
from izreg.auth.store import AuthStore
from izreg.auth.tokenkey import TokenKey
from izreg.auth.tokenservice import TokenService
from izreg.storage.lmdbenv import open_env
from izreg.tap import Options
from tests.helpers.server import REPO_ROOT


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options.subOptions.config


def test_a_missing_data_dir_is_an_error_without_init(tmp_path):
    typo = tmp_path / "typo" / "path"
    with pytest.raises(SystemExit) as e:
        parse("server", "--data-dir", str(typo))
    assert "does not exist" in str(e.value) and "--init" in str(e.value)
    assert parse("server", "--data-dir", str(typo), "--init").init is True
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ninit = true\ndata_dir = "{typo}"\n')
    assert parse("server", "--config", str(config)).data_dir == str(typo)
    assert not typo.exists()  # nothing is made before the service starts


def test_the_default_data_dir_may_be_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("server").data_dir == "izreg-data"
    assert parse("server", "--data-dir", "./izreg-data").data_dir == "./izreg-data"


def test_an_existing_empty_data_dir_is_fine(tmp_path):
    assert parse("server", "--data-dir", str(tmp_path)).data_dir == str(tmp_path)


@pytest.mark.e2e  # a real izreg process
@pytest.mark.parametrize("command", ["server", "edge"])
def test_version(command):
    """izreg's version, not Twisted's (twistd's own --version); the edge's needs none of its required options."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.run([twistd, "izreg", command, "--version"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"izreg {__version__}"


def test_the_token_key_is_kept_in_the_data_dir(tmp_path):
    key = TokenKey(str(tmp_path))
    secret = key.secret()
    path = tmp_path / "token.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 32 and TokenKey(str(tmp_path)).secret() == secret  # another process, a restart
    assert secret.hex() not in repr(key)
    key.rotate()
    assert key.secret() != secret and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token.key"]  # no temp file left


def test_tokens_survive_a_restart_and_die_with_a_rotation(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    try:
        store = AuthStore(env)
        account = store.create_account(1000.0).account_id
        _, access_key = store.create_key(account, 1000.0)
        clock = lambda: 1000.0  # noqa: E731

        def server():
            return Authenticator(store, clock, token_service=True, failures=FailedAuthentications(FailureLimiter(10, 60)),
                                 signing_key=TokenKey(str(tmp_path)).secret)

        import base64

        basic = "Basic " + base64.b64encode(f"KEY:{access_key.reveal()}".encode()).decode()
        token = TokenService(server(), 3600).issue_token("GET", basic, {}, "192.0.2.1")["token"]
        assert server().authenticate("Bearer " + token, "192.0.2.1", realm="https://r/v2/token").kind == "token"  # the next process
        TokenKey(str(tmp_path)).rotate()
        with pytest.raises(Exception) as e:
            server().authenticate("Bearer " + token, "192.0.2.1", realm="https://r/v2/token")
        assert "signature" in str(e.value.message if hasattr(e.value, "message") else e.value)
    finally:
        env.close()
