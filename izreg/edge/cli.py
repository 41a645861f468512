# -*- test-case-name: tests.edge.test_edge_e2e -*-
"""
``izreg-edge``: pins of an edge cache, changed while the edge runs.

Usage::

    izreg-edge [--cache-dir DIR | --config FILE] pin ACCOUNT/APP:TAG
    izreg-edge [--cache-dir DIR | --config FILE] unpin ACCOUNT/APP:TAG
    izreg-edge [--cache-dir DIR | --config FILE] pins [--json]

``pins`` prints a header (PIN, DIGEST, STATUS), then per pin, in aligned
columns, the digest it resolved to and when it was fetched, or why the last
try failed and when (not found on the registry, refused, unreachable), or
"not fetched yet" if the edge has not tried it yet; ``--json`` prints the
same as one JSON object (for scripts).

It writes to the cache's LMDB index (safe across processes); the running
edge reads the pins every 2 s (L{izreg.edge.config.NEW_PIN_CHECK}) and
fetches a new one then (when the registry is unreachable: at a refresh
round after it answers again, every ``pin_refresh_interval``), and stops
protecting an unpinned image from eviction at once. ``pin`` says so. Errors
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from izreg.core.argv import parse_args
from izreg.edge.config import NEW_PIN_CHECK, EdgeConfig, parse_pin, parse_toml
from izreg.service.config import ConfigError


def _cache_dir(args) -> str:
    if args.cache_dir:
        return args.cache_dir
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                values = parse_toml(f.read(), args.config)
        except OSError as e:
            raise ConfigError(f"cannot read config file {args.config}: {e.strerror}") from None
        return values.get("cache_dir", EdgeConfig.cache_dir)
    return EdgeConfig.cache_dir


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pin_status(state: dict) -> str:
    """
    A pin's last column: when it was fetched; why the last try failed and when (the registry's 404, 401 or
    403, unreachable, ...), after the time of the last fetch if there was one; or that it was never tried.
    """
    fetched = _iso(state["at"]) if state.get("at") else None
    if state.get("problem"):
        failed = f"{state['problem']} at {_iso(state['checked'])}"
        return f"fetched {fetched}; then {failed}" if fetched else failed
    return fetched or "not fetched yet"


def pins_table(found: dict) -> list[str]:
    """The lines of ``izreg-edge pins``: a header, then a pin a line, in aligned columns (C{--json}: for scripts)."""
    if not found:
        return ["no pins (izreg-edge pin ACCOUNT/APP:TAG adds one)"]
    rows = [("PIN", "DIGEST", "STATUS")]
    rows += [(ref, state.get("digest") or "-", pin_status(state)) for ref, state in sorted(found.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return [f"{ref:<{widths[0]}}  {digest:<{widths[1]}}  {status}" for ref, digest, status in rows]


def main(argv=None, stdout=None, stderr=None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parser = argparse.ArgumentParser(prog="izreg-edge", description="Pins of an izreg edge cache.")
    parser.add_argument("--cache-dir", help="the edge's cache directory (default: ./izreg-edge-cache)")
    parser.add_argument("--config", help="read cache_dir from this file's [edge] table")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("pin", "fetch an image ahead and never evict it"), ("unpin", "stop pinning an image")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ref", metavar="ACCOUNT/APP:TAG")
    pins = sub.add_parser("pins", help="list the pins and what they resolved to")
    pins.add_argument("--json", action="store_true")
    args = parse_args(parser, sys.argv[1:] if argv is None else argv, ("--cache-dir", "--config"))
    try:
        root = _cache_dir(args)
        if args.command in ("pin", "unpin"):
            parse_pin(args.ref)
        if not os.path.isdir(os.path.join(root, "index")):
            raise ConfigError(f"no edge cache in {root!r} (set --cache-dir or --config)")
        from izreg.edge.cache import EdgeCache

        cache = EdgeCache(root, limit=0)
    except ConfigError as e:
        stderr.write(f"izreg-edge: {e}\n")
        return 2
    try:
        if args.command == "pin":
            if not cache.pin(args.ref):
                stdout.write(f"pinned {args.ref} (already pinned)\n")
            else:
                stdout.write(f"pinned {args.ref}: a running edge fetches it within {NEW_PIN_CHECK} s, or when the"
                             " registry answers again if it is unreachable; `izreg-edge pins` shows when it was"
                             " fetched, or why not\n")
        elif args.command == "unpin":
            if not cache.unpin(args.ref):
                stderr.write(f"izreg-edge: {args.ref} is not pinned\n")
                return 2
            stdout.write(f"unpinned {args.ref}\n")
        else:
            found = cache.pins()
            if args.json:
                stdout.write(json.dumps(found, indent=1) + "\n")
            else:
                stdout.writelines(line + "\n" for line in pins_table(found))
        return 0
    finally:
        cache.env.close()


if __name__ == "__main__":
    sys.exit(main())
