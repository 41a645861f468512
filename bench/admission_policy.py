"""
The CPU of the TLS handshake admission's policy (izreg/service/tls/admission.py), in-process.

    python -m bench.admission_policy [--root DIR] [--rounds 50000]

A fake clock and stub connections: 1,000 connections arrive at 64 slots from G groups, then
each round frees one slot and one connection arrives; prints the microseconds per round. With
C{--root} another tree's admission runs (a C{git archive} of main, say). The second line of
each pair has C{max_waiting} below the number waiting: every arrival drops one (where that
tree knows C{max_waiting}).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import sys
import time
from collections import deque


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="the tree whose izreg to import (default: this one)")
    parser.add_argument("--rounds", type=int, default=50000)
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, args.root)
    from twisted.internet.task import Clock

    from izreg.service.tls.admission import HandshakeAdmission

    shaking: deque = deque()

    class Stub:
        def __init__(self, address: str) -> None:
            self.address = self.group = address

        def _wait(self) -> None:
            pass

        def _start(self) -> None:
            shaking.append(self)

        def _expired(self) -> None:
            pass

    bounded = "max_waiting" in inspect.signature(HandshakeAdmission).parameters
    for groups in (1, 64, 1000):
        for max_waiting in ((0, 900) if bounded else (0,)):
            shaking.clear()
            admission = HandshakeAdmission(Clock(), 64, 10, 60, **({"max_waiting": max_waiting} if bounded else {}))
            addresses = [f"10.0.{i // 250}.{i % 250}" for i in range(groups)]
            for i in range(1000):
                admission._arrived(Stub(addresses[i % groups]))
            gc.collect()
            started = time.perf_counter()
            for n in range(args.rounds):
                if not max_waiting:
                    admission._release(shaking.popleft())
                admission._arrived(Stub(addresses[n % groups]))
            per = (time.perf_counter() - started) / args.rounds * 1e6
            what = f"an arrival past max_waiting = {max_waiting}" if max_waiting else "a slot freed and an arrival"
            print(f"{groups} groups, {len(admission.waiting)} waiting: {per:.1f} us per round ({what})")


if __name__ == "__main__":
    main()
