"""
A network partition between a node's database pool and PostgreSQL, for
tests/storage/test_pg_partition.py: run as ``unshare -n python -m
tests.helpers.partition`` (a network namespace of its own, so that taking its
loopback down touches no other process's traffic). It starts a PostgreSQL
server in there, makes a call, takes the loopback down (every packet is
dropped: the query's bytes stay unacknowledged), makes a call (waited for
at most query_timeout + 30 s: then it says it hung), brings the
loopback back and calls until the pool serves again; prints what it saw as
one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def _link(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


def main(query_timeout: float) -> dict:
    from izreg.storage.pg import Database, DatabaseUnavailable
    from tests.helpers.postgres import PostgresServer

    _link("up")
    base = tempfile.mkdtemp(prefix="izreg-pg-partition-")
    os.chmod(base, 0o755)
    server = PostgresServer(base)
    seen: dict = {}
    try:
        server.start()
        db = Database(server.create_database(), max_size=1, statement_timeout=1, query_timeout=query_timeout)
        try:
            one = lambda cur: cur.execute("SELECT 1").fetchone()[0]  # noqa: E731
            seen["before"] = db.run(one)
            _link("down")
            started = time.monotonic()

            def during():
                try:
                    seen["during"] = db.run(one)
                except DatabaseUnavailable as e:
                    seen["during"] = f"{type(e).__name__}: {e}"
                seen["took"] = time.monotonic() - started
            call = threading.Thread(target=during)
            call.start()
            call.join(query_timeout + 30)  # without a bound, TCP's ~15 minutes: told, not waited for
            seen["hung"] = call.is_alive()
            _link("up")
            call.join()  # the retransmissions get through now
            started = time.monotonic()
            while "after" not in seen and time.monotonic() - started < 60:
                try:
                    seen["after"] = db.run(one)
                except DatabaseUnavailable:
                    time.sleep(0.1)  # the pool's own reconnection, in its threads
            seen["back_after"] = time.monotonic() - started
        finally:
            db.close()
    finally:
        _link("up")
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return seen


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]))))
