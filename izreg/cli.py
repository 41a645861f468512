# -*- test-case-name: tests.test_cli -*-
"""
The ``izreg`` admin command: accounts and access keys in a data directory.

It opens the same data as the server (L{izreg.service.backends}: the LMDB
environment, or the shared PostgreSQL database: L{Context.open_stores}) and may run while the server
does: the server reads key records on every request, so a new or revoked key
takes effect at once.

Usage::

    izreg [--data-dir DIR] account create [--name NAME]
    izreg [--data-dir DIR] account list [--json]
    izreg [--data-dir DIR] key create ACCOUNT_ID [--name NAME] [--read-only]
    izreg [--data-dir DIR] key list ACCOUNT_ID [--json]
    izreg [--data-dir DIR] key revoke KEY_ID

``--config FILE`` reads the server's TOML file (its data directory and LMDB
map size); ``--data-dir`` overrides it, and so does ``$IZREG_DATA_DIR`` (as
for ``twistd izreg server``: L{izreg.service.config.load}); the default is
``./izreg-data``.
Errors are one line on stderr and exit status 2, never a traceback.

Adding a command group (e.g. ``izreg device ...``): follow the convention
of L{izreg.commands} (C{register(subparsers)} setting C{handler(args,
context) -> int} on each parser, errors raised as C{CommandError}), and add
it to L{GROUPS}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Mapping, Sequence, TextIO

from izreg import __version__, db_cli, devices_cli, manage_cli, ops_cli
from izreg.auth import keys
from izreg.auth.interfaces import IAuthStore, IDeviceStore
from izreg.auth.store import KeyRecord
from izreg.commands import EXIT_ERROR, CommandError, iso, one_line, table
from izreg.commands import account_id as _account_id
from izreg.core.argv import parse_args
from izreg.service.config import ENV_DATA_DIR, Config, ConfigError, load

__all__ = ["EXIT_ERROR", "CommandError", "Context", "main"]

#: the server's default data directory (relative to the working directory), kept in one place
DEFAULT_DATA_DIR = Config.data_dir


class Context:
    """
    What handlers get besides their arguments: output, clock and (lazily) the
    stores. Handlers reach the registry's data only through L{store},
    L{devices}, L{audit}, L{webhooks}, L{token_key} and L{index} (their
    interfaces, never an LMDB environment), so that the same commands work on
    PostgreSQL: L{open_stores} is the one place that picks the backend.
    """

    def __init__(self, data_dir: str, now: Callable[[], float], stdout: TextIO, stderr: TextIO,
                 config: Config | None = None) -> None:
        self.data_dir = data_dir
        #: the server's settings (C{--config}); the LMDB map size is the server's
        self.config = config or Config(data_dir=data_dir)
        self.now = now
        self.stdout = stdout
        self.stderr = stderr
        self._opened: dict | None = None  # what open_stores made: name -> store (and "close")
        self._made: dict = {}
        self._backend = None

    def store(self, create: bool = False) -> IAuthStore:
        """
        The accounts and keys. Unless C{create}, a data directory without an
        index is an error (a mistyped ``--data-dir`` should not silently
        create an empty registry).
        """
        return self._get("auth", create)

    def devices(self) -> IDeviceStore:
        """Device revocations and pull records."""
        return self._get("devices")

    def audit(self):
        """The audit log (L{izreg.storage.interfaces.IAuditLog})."""
        return self._get("audit")

    def webhooks(self):
        """Webhooks and their deliveries (L{izreg.storage.interfaces.IWebhookStore})."""
        return self._get("webhooks")

    def token_key(self):
        """The token signing key (C{secret()}, C{rotate()})."""
        return self._get("token_key")

    def index(self):
        """The metadata index (repositories, tags, manifests)."""
        return self._get("index")

    def _get(self, name: str, create: bool = False):
        if self._opened is None:
            self._opened = self.open_stores(create)
        if name not in self._made:
            self._made[name] = self._opened[name]()
        return self._made[name]

    def open_stores(self, create: bool = False) -> dict:
        """
        Open the registry's data through L{izreg.service.backends} (the LMDB
        environment of C{data_dir}, or the PostgreSQL database of
        C{[metadata]}); C{{name: factory}} of each store, and C{"close"}.
        """
        backend = self.backend(create)

        def shared_key(store):
            # the nodes share one webhook.key: a command must never make another one
            if backend.shared:
                store.box.create = False
            return store

        return {
            "auth": lambda: backend.auth,
            "devices": lambda: backend.devices,
            "audit": lambda: backend.audit,
            "webhooks": lambda: shared_key(backend.webhooks),
            "token_key": lambda: shared_key(backend.token_key()),
            "index": lambda: backend.index,
            "close": backend.close,
        }

    def backend(self, create: bool = False):
        """The metadata backend (L{izreg.service.backends.Backend}), opened once; a failure is one line."""
        from izreg.service.backends import BackendError, open_backend

        if self._backend is None:
            try:
                self._backend = open_backend(self.config, self.data_dir, create=create, command=True)
            except BackendError as e:
                message = str(e)
                if message.startswith("no izreg data"):
                    message = (f"no izreg data in {self.data_dir!r}: the server's first start makes it "
                               f"(twistd izreg server); else set --data-dir or {ENV_DATA_DIR}")
                raise CommandError(message) from None
        return self._backend

    def close(self) -> None:
        if self._opened is not None:
            self._opened["close"]()
        elif self._backend is not None:
            self._backend.close()
        self._opened, self._made, self._backend = None, {}, None

    def out(self, line: str) -> None:
        print(line, file=self.stdout)


Handler = Callable[[argparse.Namespace, Context], int]


# account ---------------------------------------------------------------------


def register_account(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("account", help="create and list accounts")
    commands = group.add_subparsers(dest="account_command", metavar="COMMAND", required=True)
    create = commands.add_parser("create", help="create an account; prints its id")
    create.add_argument("--name", default="", help="a label for people")
    create.set_defaults(handler=account_create)
    listing = commands.add_parser("list", help="list accounts")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=account_list)
    manage_cli.register_account_delete(commands)


def account_create(args: argparse.Namespace, context: Context) -> int:
    account = context.store().create_account(context.now(), name=args.name)
    ops_cli.record(context, "account-create", account.account_id, f"account:{account.account_id}",
                   {"name": args.name} if args.name else None)
    context.out(account.account_id)
    return 0


def account_list(args: argparse.Namespace, context: Context) -> int:
    accounts = context.store().list_accounts()
    if args.json:
        for a in accounts:
            context.out(json.dumps({"id": a.account_id, "name": a.name, "created": _iso(a.created)}))
        return 0
    _table(context, ["ACCOUNT", "NAME", "CREATED"], [[a.account_id, a.name or "-", _iso(a.created)] for a in accounts])
    return 0


# key -----------------------------------------------------------------------------


def register_key(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("key", help="create, list and revoke access keys")
    commands = group.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    create = commands.add_parser("create", help="create a key; prints it (shown only once)")
    create.add_argument("account", metavar="ACCOUNT_ID")
    create.add_argument("--name", default="", help="a label for people")
    create.add_argument("--read-only", action="store_true", help="pull only")
    create.set_defaults(handler=key_create)
    listing = commands.add_parser("list", help="list an account's keys (never the secrets)")
    listing.add_argument("account", metavar="ACCOUNT_ID")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=key_list)
    revoke = commands.add_parser("revoke", help="revoke a key; it fails from the next request on")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(handler=key_revoke)


def key_create(args: argparse.Namespace, context: Context) -> int:
    account = _account_id(args.account)
    record, key = context.store().create_key(account, context.now(), name=args.name, read_only=args.read_only)
    ops_cli.record(context, "key-create", account, f"key:{record.key_id}", {"scope": record.scope})
    context.out(key.reveal())
    context.stderr.write(f"key id {record.key_id} (for izreg key revoke); the key is not shown again\n")
    return 0


def key_list(args: argparse.Namespace, context: Context) -> int:
    records = context.store().list_keys(_account_id(args.account))
    if args.json:
        for r in records:
            context.out(json.dumps(_key_json(r)))
        return 0
    _table(
        context,
        ["KEY_ID", "NAME", "SCOPE", "CREATED", "LAST_USED", "STATUS"],
        [
            [r.key_id, r.name or "-", r.scope, _iso(r.created), _iso(r.last_used), "active" if r.active else f"revoked {_iso(r.revoked)}"]
            for r in records
        ],
    )
    return 0


def key_revoke(args: argparse.Namespace, context: Context) -> int:
    if not keys.is_key_id(args.key_id):
        hint = " (give the key id, not the key)" if keys.looks_like_key(args.key_id) else ""
        raise CommandError(f"invalid key id: expected 16 lowercase hex characters{hint}")
    record = context.store().revoke_key(args.key_id, context.now())
    ops_cli.record(context, "key-revoke", record.account, f"key:{record.key_id}")
    context.out(f"revoked {record.key_id}")
    return 0


def _key_json(r: KeyRecord) -> dict[str, object]:
    return {
        "id": r.key_id,
        "account": r.account,
        "name": r.name,
        "scope": r.scope,
        "created": _iso(r.created),
        "last_used": None if r.last_used is None else _iso(r.last_used),
        "revoked": None if r.revoked is None else _iso(r.revoked),
    }


def _iso(when: float | None) -> str:
    return iso(when)


def _table(context: Context, header: list[str], rows: list[list[str]]) -> None:
    table(context.out, header, rows)


# token -----------------------------------------------------------------------------


def register_token(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("token", help="the token service's signing key")
    commands = group.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    rotate = commands.add_parser("rotate-key", help="replace the signing key: every token issued before fails")
    rotate.set_defaults(handler=token_rotate_key)


def token_rotate_key(args: argparse.Namespace, context: Context) -> int:
    from izreg.storage.webhooks import WebhookError

    context.store()  # the data directory must exist and hold izreg data
    try:
        context.token_key().rotate()
    except WebhookError as e:
        raise CommandError(str(e)) from None
    print("rotated the token signing key; tokens issued before it no longer work (clients fetch new ones)",
          file=context.stderr)
    return 0


# main ------------------------------------------------------------------------------

#: every command group; each adds its parser to the top-level subparsers
GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [register_account, register_key, devices_cli.add_subparsers,
                                                              manage_cli.register, ops_cli.register,
                                                              register_token, db_cli.register]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the usage too), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"izreg: error: {message} (see {self.prog} --help)\n")


def build_parser(groups: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="izreg", description="Manage an izreg registry's data (accounts, keys, devices, images, "
                                               "storage, audit, webhooks, backups), also while the server runs.")
    parser.add_argument("--config", metavar="FILE", help="the server's TOML config file (etc/izreg.toml)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the server's data directory (default: ${ENV_DATA_DIR}, else the config's, else ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--version", action="version", version=f"izreg {__version__}")
    subparsers = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for register in groups or GROUPS:
        register(subparsers)
    return parser


#: the izreg command's own options, which take a value; also taken after the command (L{izreg.core.argv.options_first})
GLOBAL_OPTIONS = ("--config", "--data-dir")


#: a reader that went away (``izreg images ... | head``): the status of a command that SIGPIPE ends
EXIT_BROKEN_PIPE = 128 + 13


def _discard(stdout: TextIO) -> None:
    """Send what is left of C{stdout}'s buffer, and all later output, nowhere (Python flushes it at exit)."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    now: Callable[[], float] = time.time,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    context_class: Callable[..., Context] = Context,
) -> int:
    """
    Run the command; return the exit status (0, 2 on any error, 141 when the reader of its
    output went away).

    @param context_class: makes the handlers' L{Context} (a subclass opens other stores).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        args = parse_args(parser, sys.argv[1:] if argv is None else argv, GLOBAL_OPTIONS)
    except SystemExit as e:  # usage errors (already printed) and --help
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        config = load(args.config, {"data_dir": args.data_dir}, environ)
    except ConfigError as e:
        print(f"izreg: error: {e}", file=stderr)
        return EXIT_ERROR
    context = context_class(config.data_dir, now, stdout, stderr, config)
    try:
        code = args.handler(args, context)
        stdout.flush()  # a reader gone (| head) is seen here, not as an error while Python exits
        return code
    except BrokenPipeError:
        # the reader went away (izreg images ... | head): quiet and 141, as a command that SIGPIPE ends
        _discard(stdout)
        return EXIT_BROKEN_PIPE
    except Exception as e:  # the convention (izreg.commands): one line on stderr, exit 2, never a traceback
        print(f"izreg: error: {one_line(e)}", file=stderr)
    finally:
        try:
            context.close()
        except Exception as e:
            print(f"izreg: error: {one_line(e)}", file=stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
