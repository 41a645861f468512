"""
The failed-authentication brake across nodes (izreg.auth.clusterlimit):
two limiters, two nodes, one real PostgreSQL; the runner calls at once.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from izreg.auth.clusterlimit import SharedFailureLimiter
from izreg.core.errors import RegistryError
from izreg.storage.cluster import FailureCounts
from izreg.storage.pg import Database

pytestmark = pytest.mark.postgres


def now_runner(f, *args):
    return defer.maybeDeferred(f, *args)


@pytest.fixture
def two_nodes(pg_db, pg_schema_dsn):
    other = Database(pg_schema_dsn, max_size=1)
    yield (SharedFailureLimiter(3, 60, FailureCounts(pg_db), now_runner),
           SharedFailureLimiter(3, 60, FailureCounts(other), now_runner))
    other.close()


def test_a_brake_filled_on_one_node_closes_on_the_other_at_its_next_failure(two_nodes):
    one, two = two_nodes
    brake = ("192.0.2.1", "*")
    for t in (100.0, 101.0, 102.0):
        one.check(brake, t)
        one.record_failure(brake, t)
    with pytest.raises(RegistryError) as refused:
        one.check(brake, 103.0)
    assert refused.value.headers["Retry-After"] == "57"
    two.check(brake, 103.0)  # node two has not seen a failure of this brake yet
    two.record_failure(brake, 103.0)  # ... its first one tells it the cluster's count
    with pytest.raises(RegistryError):
        two.check(brake, 104.0)
    assert two.retry_after(brake, 104.0) == 57  # the oldest of the latest three (101.0) leaves at 161
    assert two.retry_after(brake, 161.5) is None
    two.check(("192.0.2.2", "*"), 104.0)  # another address: its own brake


def test_a_key_brake_is_separate_from_the_address_brake(two_nodes):
    one, two = two_nodes
    for t in (1.0, 2.0, 3.0):
        one.record_failure(("192.0.2.1", "0123456789abcdef"), t)
    two.record_failure(("192.0.2.1", "*"), 4.0)
    two.check(("192.0.2.1", "*"), 5.0)
    two.record_failure(("192.0.2.1", "0123456789abcdef"), 5.0)
    with pytest.raises(RegistryError):
        two.check(("192.0.2.1", "0123456789abcdef"), 6.0)


def test_a_database_failure_keeps_the_local_brake(pg_db):
    def failing(f, *args):
        return defer.fail(RuntimeError("the database is down"))

    limiter = SharedFailureLimiter(2, 60, FailureCounts(pg_db), failing)
    limiter.record_failure(("192.0.2.1", "*"), 1.0)
    limiter.record_failure(("192.0.2.1", "*"), 2.0)
    with pytest.raises(RegistryError):
        limiter.check(("192.0.2.1", "*"), 3.0)
