# -*- test-case-name: tests.http.test_browse -*-
"""
``izreg images``, ``izreg usage``: what is stored, from the command line
(the same documents as the browse API, see L{izreg.browse}).

Each handler follows L{izreg.cli}'s convention: C{handler(args, context) -> int}.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from izreg.browse import Browser, usage
from izreg.commands import CommandError, account_id, plural, repository_of

#: the largest page read at once (the listing walks every page)
_PAGE = 500
#: hex digits of a digest the DIGEST column of C{izreg images} shows (docker images' 12), without --no-trunc
SHORT_HEX = 12


def short_digests(digests) -> Callable[[str], str]:
    """
    How C{izreg images} shows each of C{digests}: C{sha256:} and its first L{SHORT_HEX} hex digits, more
    when two of them begin alike (each shown prefix names one of them, as git's abbreviations).
    """
    digests = set(digests)
    length = SHORT_HEX
    while len({_prefix(d, length) for d in digests}) < len(digests):
        length += 1
    return lambda digest: _prefix(digest, length)


def _prefix(digest: str, length: int) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:length]}"


def human(size: int) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 20.0 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def register(subparsers: argparse._SubParsersAction) -> None:
    register_storage(subparsers)
    images = subparsers.add_parser(
        "images", help="list an account's images (tags, sizes, platforms, device pulls)",
        description="List an account's images (tags, sizes, platforms, device pulls).",
        epilog=f"The DIGEST column shows a digest's first {SHORT_HEX} hex digits (more if two listed begin alike),"
               " enough to tell the listed manifests apart but not to name one: nothing takes a shortened digest (DELETE"
               " /v2/NAME/manifests/DIGEST, docker pull REGISTRY/NAME@DIGEST); --no-trunc or --json shows the"
               " whole digest.")
    images.add_argument("account", metavar="ACCOUNT_ID")
    images.add_argument("--repository", metavar="NAME", help="one repository: NAME or ACCOUNT_ID/NAME")
    images.add_argument("--no-trunc", action="store_true",
                        help="whole digests (sha256: and 64 hex digits), as the registry's API takes them")
    images.add_argument("--json", action="store_true", help="one JSON document (whole digests)")
    images.set_defaults(handler=images_command)
    use = subparsers.add_parser("usage", help="stored bytes per account (shared blobs counted once per account)")
    use.add_argument("account", metavar="ACCOUNT_ID", nargs="?")
    use.add_argument("--json", action="store_true", help="one JSON object per line")
    use.set_defaults(handler=usage_command)


def register_account_delete(commands: argparse._SubParsersAction) -> None:
    delete = commands.add_parser("delete", help="delete an account and its keys (refused while it has repositories)")
    delete.add_argument("account", metavar="ACCOUNT_ID")
    delete.add_argument("--purge", action="store_true",
                        help="also delete its repositories (garbage collection then reclaims the storage)")
    delete.set_defaults(handler=account_delete)


def account_delete(args: argparse.Namespace, context) -> int:

    account = account_id(args.account)
    store = context.store()
    if store.get_account(account) is None:
        raise CommandError(f"no such account: {account}")
    index = context.index()
    repos = [name for name, _ in index.list_repo_stats(f"{account}/", None, 10**9)[0]]
    if repos and not args.purge:
        raise CommandError(f"account {account} has {plural(len(repos), 'repository', 'repositories')}; delete them first,"
                           " or add --purge")
    audit = context.audit()
    manifests = 0
    for name in repos:
        manifests += index.purge_repo(name)
        audit.record(action="delete-repository", account=account, actor="cli", target=name, now=context.now())
    keys = store.delete_account(account)
    audit.record(action="delete-account", account=account, actor="cli", target=account,
                 detail={"repositories": len(repos), "manifests": manifests, "keys": keys}, now=context.now())
    context.out(f"deleted account {account}: {plural(keys, 'key')}, {plural(len(repos), 'repository', 'repositories')},"
                f" {plural(manifests, 'manifest')}"
                + (" (garbage collection reclaims their blobs)" if repos else ""))
    return 0


def _browser(context) -> Browser:
    index, blobs, _ = _storage(context)
    return Browser(index, blobs, context.devices())


def _pages(fetch, key: str):
    last = None
    while True:
        found, more = fetch(_PAGE, last)
        yield from found
        if not more or not found:
            return
        last = found[-1][key]


def _known(context, browser: Browser, account: str) -> str:
    """C{account}, if it exists or holds repositories: a mistyped id is an error, not an empty listing."""
    if context.store().get_account(account) is None and not browser.index.list_repo_stats(f"{account}/", None, 1)[0]:
        raise CommandError(f"no such account: {account}")
    return account


def images_command(args: argparse.Namespace, context) -> int:

    browser = _browser(context)
    account = _known(context, browser, account_id(args.account))
    if args.repository:
        name = repository_of(account, args.repository)
        stats = browser.index.repo_stats(name)
        if stats is None:
            raise CommandError(f"no repository {name}")
        repositories = [Browser.repository(name, stats)]
    else:
        repositories = list(_pages(lambda n, last: browser.repositories(account, n, last), "name"))
    for repo in repositories:
        repo["images"] = list(_pages(lambda n, last: browser.manifests(repo["name"], n, last), "digest"))
    if args.json:
        context.out(json.dumps({"account": account, "repositories": repositories}, indent=2))
        return 0
    from izreg.cli import _table

    rows = []
    shown = (lambda digest: digest) if args.no_trunc else short_digests(
        m["digest"] for repo in repositories for m in repo["images"])
    for repo in repositories:
        path = repo["name"][33:]
        if not repo["images"]:  # every manifest deleted: the repository is still listed (and counted below)
            rows.append([path, "(no manifests)", "-", "-", "-", human(0), "-", "0"])
        for m in repo["images"]:
            devices = m["devices"]
            rows.append([
                path, shown(m["digest"]), m["kind"], ",".join(m["tags"]) or "-", ",".join(m["platforms"]) or "-",
                human(m["size"]), m["pushed"] or "-",
                f"{devices['count']} (last {devices['last_pulled']})" if devices["count"] else "0",
            ])
    _table(context, ["REPOSITORY", "DIGEST", "KIND", "TAGS", "PLATFORMS", "SIZE", "PUSHED", "DEVICES"], rows)
    total = sum(r["size"] for r in repositories)
    context.out(f"{plural(len(repositories), 'repository', 'repositories')},"
                f" {plural(sum(len(r['images']) for r in repositories), 'manifest')}, "
                f"{human(total)} referenced")
    return 0


def usage_command(args: argparse.Namespace, context) -> int:
    from izreg.cli import _account_id, _table

    browser = _browser(context)
    if args.account:
        accounts = [_known(context, browser, account_id(args.account))]
    else:
        accounts = sorted({a.account_id for a in context.store().list_accounts()}
                          | {name[:32] for name, _ in browser.index.list_repo_stats("", None, 10**9)[0]})
    found = [usage(browser.index, account) for account in accounts]
    if args.json:
        for u in found:
            context.out(json.dumps(u))
        return 0
    _table(context, ["ACCOUNT", "REPOSITORIES", "MANIFESTS", "BLOBS", "SIZE", "BYTES"],
           [[u["account"], u["repositories"], u["manifests"], u["blobs"], human(u["size"]), u["size"]] for u in found])
    return 0


# gc and fsck ----------------------------------------------------------------------

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text or "")
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def seconds_text(seconds: float) -> str:
    """A duration as L{duration} reads it: C{1h}, C{10m}, C{90s}, C{7d} (the largest unit it is a whole number of)."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def register_storage(subparsers: argparse._SubParsersAction) -> None:
    gc = subparsers.add_parser("gc", help="reclaim storage now: one garbage-collection sweep, then the audit log pruned to [audit] keep_days and max_entries (the server may run)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    gc.add_argument("--grace", type=duration, metavar="DURATION",
                    help="keep what became unreferenced less than this ago (default: the config's [gc] grace, 1h)")
    gc.set_defaults(handler=gc_command)
    fsck = subparsers.add_parser("fsck", help="check every blob and manifest; exit status 1 if something is wrong"
                                 " (orphan blobs alone, expected after a crash and reclaimed by gc, exit 0 with a"
                                 " warning)")
    fsck.add_argument("--repair", action="store_true", help="remove or re-index what can be; say what cannot")
    fsck.set_defaults(handler=fsck_command)


def _progress(context, unit: str):
    """
    A tqdm progress bar on a terminal (stderr), nothing otherwise. Each call
    of C{start(total)} adds C{total} to the one bar (a sweep's parts, each
    counted when it is scanned).
    """
    def start(total: int):
        if not getattr(context.stderr, "isatty", lambda: False)():
            return lambda: None
        from tqdm import tqdm

        bars = getattr(context, "_bars", [])
        if bars:
            bar = bars[-1]
            bar.total += total
            bar.refresh()
        else:
            bar = tqdm(total=total, unit=unit, file=context.stderr)
            context._bars = [bar]
        return lambda: bar.update(1)
    return start


def _close_bars(context) -> None:
    for bar in getattr(context, "_bars", []):
        bar.close()
    context._bars = []


def _storage(context):
    """The index, the blob store of the server's config (``izreg --config``; filesystem by default) and that config."""
    from izreg.storage.blobs import BlobStore

    config = context.config
    context.store()
    if config.storage_backend == "s3":
        from izreg.storage.s3 import s3_blobs

        blobs = s3_blobs(config, run=lambda f, *a, **k: f(*a, **k))
    else:
        blobs = BlobStore(context.data_dir)
    return context.index(), blobs, config


def gc_command(args: argparse.Namespace, context) -> int:
    from izreg.storage.audit import Retention, prune
    from izreg.storage.gc import Collector

    index, blobs, config = _storage(context)
    grace = config.gc_grace if args.grace is None else args.grace
    lock = context.backend().sweep_lock()  # a flock, or with PostgreSQL an advisory lock across the nodes
    if not lock.acquire():
        context.stderr.write("izreg: waiting for the sweep in progress (the server's) to end\n")
        lock.acquire(wait=True)
    try:
        result = Collector(index, blobs, grace).sweep(context.now, dry_run=args.dry_run,
                                                           progress=_progress(context, "item"))
        if not args.dry_run:
            result.audit = prune(context.audit(), Retention(config.audit_keep_days, config.audit_max_entries),
                                 context.now())
    finally:
        _close_bars(context)
        lock.release()
    verb = "would free" if args.dry_run else "freed"
    context.out(f"{verb} {plural(result.files, 'file')}, {plural(result.bytes, 'byte')} ({human(result.bytes)});"
                f" {'would unlink' if args.dry_run else 'unlinked'} {plural(result.links, 'stale link')}"
                + (f"; kept {result.kept} touched meanwhile" if result.kept else "")
                + (f"; {plural(result.held, 'file')} ({human(result.held_bytes)}) held back by the grace period"
                   f" ({seconds_text(grace)}), collectable within {seconds_text(grace)}" if result.held else "")
                + (f"; pruned {plural(result.audit, 'audit record')}" if result.audit else ""))
    return 0


def fsck_command(args: argparse.Namespace, context) -> int:
    from izreg.storage.fsck import ORPHANS_EXPECTED, Checker

    index, blobs, _ = _storage(context)
    try:
        report = Checker(index, blobs).check(repair=args.repair, progress=_progress(context, "blob"), now=context.now())
    finally:
        _close_bars(context)
    for line in report.problems:
        context.out(f"problem: {line}")
    for line in report.orphans:
        context.out(f"warning: {line}")
    if report.orphans:
        context.out(f"warning: {plural(len(report.orphans), 'orphan blob')}: {ORPHANS_EXPECTED}")
    for line in report.repaired:
        context.out(f"repaired: {line}")
    for line in report.unrepaired:
        context.out(f"not repaired: {line}")
    context.out(f"checked {plural(report.blobs, 'blob')} and {plural(report.manifests, 'manifest')}: "
                + ("clean" if report.clean else plural(len(report.problems), "problem"))
                + (f", {plural(len(report.orphans), 'orphan blob')} (a warning)" if report.orphans else ""))
    # orphans alone: exit 0 (no damage, gc reclaims them; izreg.storage.fsck), not 1 after every crash
    if report.clean:
        return 0
    return 1 if (not args.repair or report.unrepaired) else 0
