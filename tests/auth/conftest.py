"""Fixtures for the auth tests: a real LMDB environment in tmp_path, a fake clock."""

from __future__ import annotations

import pytest

from izreg.auth.store import AuthStore
from izreg.storage.lmdbenv import open_env


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def env(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    yield env
    env.close()


@pytest.fixture
def store(env):
    return AuthStore(env)


@pytest.fixture
def clock():
    return FakeClock()
