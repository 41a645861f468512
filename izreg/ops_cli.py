# -*- test-case-name: tests.test_ops_cli -*-
"""
``izreg audit``, ``izreg webhook ...``, ``izreg backup`` and ``izreg restore``
(operations, #14). Registered in L{izreg.cli.GROUPS}; handlers follow its
convention C{handler(args, context) -> int}.

Usage::

    izreg audit [--account ID] [--since 2026-12-01|2026-12-01T15:00:00Z|2h|7d] [--limit N] [--json]
    izreg webhook add ACCOUNT URL --secret SECRET|- [--events push,delete,pull]
    izreg webhook list [ACCOUNT] [--json]
    izreg webhook remove HOOK_ID
    izreg webhook deliveries [--account ID] [--hook HOOK_ID] [--limit N] [--json]
    izreg backup DIR [--index-only]
    izreg --data-dir NEW restore DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from urllib.parse import urlsplit

from izreg.commands import CommandError, account_id, iso, plural, table
from izreg.core import cloudevents

AUDIT_ACTOR = "cli"


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="the audit trail: pushes, deletes, key, device and account changes")
    audit.add_argument("--account", metavar="ID", help="only this account's records")
    audit.add_argument("--since", metavar="WHEN", help="from this time on: 2026-12-01, 2026-12-01T15:00:00Z, 2h, 7d")
    audit.add_argument("--limit", type=int, metavar="N", help="at most N records (the oldest first)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(handler=audit_list)

    webhook = subparsers.add_parser("webhook", help="event notifications per account (CloudEvents, HMAC-signed)")
    commands = webhook.add_subparsers(dest="webhook_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", help="add a webhook; prints its id")
    add.add_argument("account", metavar="ACCOUNT_ID")
    add.add_argument("url", metavar="URL")
    add.add_argument("--secret", required=True, help="signing secret (at least 16 characters; - reads it from stdin)")
    add.add_argument("--events", default="push,delete", help="comma-separated: push, delete, pull (default push,delete)")
    add.set_defaults(handler=webhook_add)
    listing = commands.add_parser("list", help="list webhooks (never their secrets)")
    listing.add_argument("account", metavar="ACCOUNT_ID", nargs="?")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=webhook_list)
    remove = commands.add_parser("remove", help="remove a webhook (its pending deliveries are dropped)")
    remove.add_argument("hook_id", metavar="HOOK_ID")
    remove.set_defaults(handler=webhook_remove)
    deliveries = commands.add_parser("deliveries", help="recent deliveries and their outcome, newest first")
    deliveries.add_argument("--account", metavar="ID")
    deliveries.add_argument("--hook", metavar="HOOK_ID")
    deliveries.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    deliveries.add_argument("--json", action="store_true", help="one JSON object per line")
    deliveries.set_defaults(handler=webhook_deliveries)

    backup = subparsers.add_parser("backup", help="a consistent copy of the data dir (fine while the server runs)")
    backup.add_argument("directory", metavar="DIR", help="an empty or new directory")
    backup.add_argument("--index-only", action="store_true",
                        help="copy the index only: the blobs are in S3 ([storage] backend = \"s3\"), backed up there")
    backup.set_defaults(handler=backup_run)
    restore = subparsers.add_parser("restore", help="restore a backup into an empty --data-dir")
    restore.add_argument("directory", metavar="DIR", help="a directory written by izreg backup")
    restore.set_defaults(handler=restore_run)


# helpers --------------------------------------------------------------------------


def _iso(when: float | None) -> str:
    return iso(when, "-")


_RELATIVE = re.compile(r"([0-9]+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """An RFC 3339 time or date (UTC unless it says), or a duration back from now (``90m``, ``2h``, ``7d``)."""
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return now - int(m.group(1)) * _SECONDS[m.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--since {text[:40]!r}: expected 2026-12-01, 2026-12-01T15:00:00Z, 2h or 7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def record(context, action: str, account: str | None, target: str, detail=None) -> None:
    """An audit record for a change made by the CLI (actor C{cli}). Never a secret."""
    context.audit().record(action=action, account=account, actor=AUDIT_ACTOR, target=target,
                           address=None, detail=detail, now=context.now())


# audit ----------------------------------------------------------------------------


def audit_list(args, context) -> int:
    account = account_id(args.account) if args.account else None
    since = parse_since(args.since, context.now()) if args.since else None
    entries = context.audit().entries(account=account, since=since, limit=args.limit)
    if args.json:
        for e in entries:
            context.out(json.dumps({**e, "time": _iso(e["time"])}, sort_keys=True))
        return 0
    table(context.out, ["TIME", "ACTION", "ACCOUNT", "ACTOR", "TARGET", "ADDRESS", "FORCED"],
                  [[_iso(e["time"]), e["action"], e.get("account") or "-", e["actor"], e["target"],
                    e.get("address") or "-", _forced(e.get("detail"))] for e in entries])
    return 0


def _forced(detail) -> str:
    """
    A delete forced past the in-use protection (C{Izreg-Force-Delete: true}, L{izreg.registry}): how many
    devices pulled what it removed, and when last; C{-} for every other record.
    """
    if not isinstance(detail, dict) or not detail.get("forced"):
        return "-"
    devices, last = detail.get("devices"), detail.get("last_pulled")
    pulled = f", last pull {_iso(last)}" if isinstance(last, (int, float)) else ""
    return f"FORCED: in use by {devices} device{'' if devices == 1 else 's'}{pulled}"


# webhook --------------------------------------------------------------------------


def _webhooks(context):
    return context.webhooks()


def webhook_add(args, context) -> int:
    from izreg.storage.webhooks import WebhookError

    account = account_id(args.account)
    if context.store().get_account(account) is None:
        raise CommandError(f"no account {account}")
    secret = sys.stdin.readline().rstrip("\n") if args.secret == "-" else args.secret
    try:
        kinds = cloudevents.parse_kinds(args.events)
        hook = _webhooks(context).add(account, args.url, secret, kinds, context.now())
    except (ValueError, WebhookError) as e:
        raise CommandError(str(e)) from None
    # the URL's host only: a path may hold a token (chat webhooks)
    host = urlsplit(hook.url).hostname
    record(context, "webhook-add", account, f"webhook:{hook.id}", {"host": host, "events": list(kinds)})
    context.out(hook.id)
    return 0


def webhook_list(args, context) -> int:
    account = account_id(args.account) if args.account else None
    hooks = _webhooks(context).hooks(account)
    if args.json:
        for h in hooks:
            context.out(json.dumps({**h.public(), "created": _iso(h.created)}))
        return 0
    table(context.out, ["HOOK_ID", "ACCOUNT", "EVENTS", "CREATED", "URL"],
                  [[h.id, h.account, ",".join(h.events), _iso(h.created), h.url] for h in hooks])
    return 0


def webhook_remove(args, context) -> int:
    if not re.fullmatch(r"[0-9a-f]{16}", args.hook_id):
        raise CommandError("invalid webhook id: expected 16 lowercase hex characters")
    hook = _webhooks(context).remove(args.hook_id)
    if hook is None:
        raise CommandError(f"no webhook {args.hook_id}")
    record(context, "webhook-remove", hook.account, f"webhook:{hook.id}")
    context.out(f"removed {hook.id}")
    return 0


def webhook_deliveries(args, context) -> int:
    account = account_id(args.account) if args.account else None
    found = _webhooks(context).deliveries(account=account, hook_id=args.hook, limit=args.limit)
    if args.json:
        for d in found:
            context.out(json.dumps({
                "id": d["id"], "hook": d["hook"], "account": d["account"], "type": d["event"]["type"],
                "subject": d["event"]["subject"], "status": d["status"], "attempts": d["attempts"],
                "last_status": d["last_status"], "last_error": d["last_error"], "created": _iso(d["created"]),
                "next_try": _iso(d["next_try"]) if d["status"] == "pending" else None, "done": _iso(d["done"]) if d["done"] else None,
            }))
        return 0
    table(context.out, ["CREATED", "HOOK_ID", "TYPE", "SUBJECT", "STATUS", "ATTEMPTS", "LAST"],
                  [[_iso(d["created"]), d["hook"], d["event"]["type"], d["event"]["subject"], d["status"],
                    str(d["attempts"]), d["last_error"] or (str(d["last_status"]) if d["last_status"] else "-")]
                   for d in found])
    return 0


# backup / restore ---------------------------------------------------------------------


def _lmdb_only(context, what: str) -> None:
    """Backup and restore copy one node's LMDB index and blob files: refused with the metadata in PostgreSQL."""
    if context.config.metadata_backend != "lmdb":
        raise CommandError(f"izreg {what} copies the LMDB index of one data directory; with metadata.backend ="
                                  " \"postgresql\" back up the database (pg_dump) and the bucket (docs/deploy.rst)")


def backup_run(args, context) -> int:
    from izreg.storage.backup import BackupError, backup

    _lmdb_only(context, "backup")

    try:
        summary = backup(context.data_dir, args.directory, context.config.lmdb_map_size, now=context.now,
                         index_only=args.index_only)
    except (BackupError, OSError) as e:
        raise CommandError(f"backup failed: {e}") from None
    context.out(f"backed up the index ({plural(summary.index_bytes, 'byte')}) and {plural(summary.blobs, 'blob')} "
                f"({plural(summary.bytes, 'byte')}) to {args.directory}")
    return 0


def restore_run(args, context) -> int:
    from izreg.storage.backup import BackupError, restore

    _lmdb_only(context, "restore")

    try:
        summary = restore(args.directory, context.data_dir, context.config.lmdb_map_size)
    except (BackupError, OSError) as e:
        raise CommandError(f"restore failed: {e}") from None
    context.out(f"restored the index and {plural(summary.blobs, 'blob')} ({plural(summary.bytes, 'byte')})"
                f" into {context.data_dir}")
    return 0
