# -*- test-case-name: tests.test_devices_cli -*-
"""
The C{izreg device ...} and C{izreg dev-certs} subcommands.

L{add_subparsers} registers them on the C{izreg} command's subparsers; each
sets C{func}, a handler C{(args) -> int} (the exit status) that takes the
data directory from C{args.data_dir}. They may run while the server does
(LMDB is multi-process safe); a revocation applies to the device's next
request.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import uuid
from typing import Callable, Sequence, TextIO

from cryptography import x509

from izreg.auth.devices import fingerprint_sha256, normalize_fingerprint, normalize_serial, serial_hex
from izreg.auth.devicestore import FINGERPRINT, SERIAL
from izreg.auth.store import UnknownAccount
from izreg.core.names import ACCOUNT_RE, NAME_RE
from izreg import devcerts
from izreg.service.config import Config

EXIT_ERROR = 2


class _Io:
    """What a handler needs besides its arguments."""

    def __init__(self, data_dir: str | None, now: float, out: TextIO, err: TextIO,
                 map_size: int = Config.lmdb_map_size, context=None) -> None:
        self.data_dir, self.now, self.out, self.err = data_dir, now, out, err
        self.map_size = map_size
        #: the command's L{izreg.cli.Context}: where the stores come from (whatever the backend)
        self.context = context

    def fail(self, message: str) -> int:
        print(f"izreg: error: {message}", file=self.err)
        return EXIT_ERROR


def add_subparsers(subparsers: argparse._SubParsersAction, clock: Callable[[], float] = time.time,
                   out: TextIO | None = None, err: TextIO | None = None) -> None:
    """
    Register C{device} (revoke, list-revoked, pulls) and C{dev-certs}.

    Each parser gets two entry points to the same handler: C{func(args) ->
    int} (data dir from C{args.data_dir}, time from C{clock}) and
    C{handler(args, context) -> int} for L{izreg.cli}'s convention (a context
    with C{data_dir}, C{now()}, C{stdout}, C{stderr}).
    """

    def bind(parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace, _Io], int]) -> None:
        parser.set_defaults(
            func=lambda args: handler(args, _Io(args.data_dir, clock(), out or sys.stdout, err or sys.stderr)),
            handler=lambda args, ctx: handler(args, _Io(ctx.data_dir, ctx.now(), ctx.stdout, ctx.stderr,
                                                        ctx.config.lmdb_map_size, ctx)),
        )

    device = subparsers.add_parser("device", help="device certificates: revocation and pull records")
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)

    revoke = sub.add_parser("revoke", help="revoke a device certificate (applies on its next request)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="certificate serial number (hex; colons allowed)")
    which.add_argument("--fingerprint", metavar="SHA256", help="SHA-256 fingerprint of the certificate (hex)")
    which.add_argument("--cert", metavar="PEM", help="a certificate file: revoke its serial and fingerprint")
    revoke.add_argument("--note", default="", help="why (shown by list-revoked)")
    bind(revoke, _revoke)

    unrevoke = sub.add_parser("unrevoke", help="take back a revocation (same selectors as revoke)")
    which = unrevoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="certificate serial number (hex; colons allowed)")
    which.add_argument("--fingerprint", metavar="SHA256", help="SHA-256 fingerprint of the certificate (hex)")
    which.add_argument("--cert", metavar="PEM", help="a certificate file: its serial and fingerprint")
    unrevoke.set_defaults(note="")
    bind(unrevoke, _revoke)

    listing = sub.add_parser("list-revoked", help="list revoked serials and fingerprints")
    bind(listing, _list_revoked)

    pulls = sub.add_parser("pulls", help="which device pulled which manifest, and when (last pull)")
    pulls.add_argument("account", metavar="ACCOUNT_ID")
    pulls.add_argument("--repository", metavar="NAME", help="only this repository (<account>/<name>)")
    bind(pulls, _pulls)

    dev = subparsers.add_parser("dev-certs", help="write a development CA, server and device certificate")
    dev.add_argument("directory", metavar="DIR", help="output directory (a skopeo --src-cert-dir, podman --cert-dir)")
    dev.add_argument("--account", metavar="ACCOUNT_ID", help="the device's account (default: a new random id)")
    dev.add_argument("--device-id", metavar="ID", default=devcerts.DEFAULT_DEVICE_ID)
    dev.add_argument("--days", type=float, default=devcerts.DEFAULT_DAYS, help="validity of the leaf certificates")
    dev.add_argument("--force", action="store_true", help="overwrite existing files")
    bind(dev, _dev_certs)


class _NoData(Exception):
    pass


def _store(io: _Io):
    """
    The command's context (its stores, through their interfaces) and the device store; data that is
    not there is an error (a mistyped --data-dir must not swallow a revocation the server never sees).
    The caller closes the context.
    """
    from izreg.cli import CommandError, Context

    context = io.context
    if context is None:
        if not io.data_dir:
            raise _NoData(f"no izreg data in {io.data_dir!r} (set --data-dir)")
        context = io.context = Context(io.data_dir, lambda: io.now, io.out, io.err,
                                       Config(data_dir=io.data_dir, lmdb_map_size=io.map_size))
    try:
        return context, context.devices()
    except CommandError as e:
        raise _NoData(str(e)) from None


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def _revoke(args, io: _Io) -> int:
    targets: list[tuple[str, str]] = []
    if args.cert:
        try:
            with open(args.cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as e:
            return io.fail(f"cannot read a PEM certificate from {args.cert}: {e}")
        targets = [(SERIAL, serial_hex(cert)), (FINGERPRINT, fingerprint_sha256(cert))]
    elif args.serial is not None:
        targets = [(SERIAL, args.serial)]
    else:
        targets = [(FINGERPRINT, args.fingerprint)]
    try:
        targets = [(kind, normalize_serial(v) if kind == SERIAL else normalize_fingerprint(v)) for kind, v in targets]
    except ValueError as e:
        return io.fail(str(e))
    try:
        context, store = _store(io)
    except _NoData as e:
        return io.fail(str(e))
    try:
        for kind, value in targets:
            if args.device_command == "unrevoke":
                done = store.unrevoke(kind, value)
                io.out.write(f"{'unrevoked' if done else 'was not revoked'}: {kind} {value}\n")
            else:
                done = store.revoke(kind, value, io.now, args.note)
                io.out.write(f"{'revoked' if done else 'already revoked'}: {kind} {value}\n")
            if done:
                context.audit().record(action=f"device-{args.device_command}", account=None, actor="cli",
                                       target=f"{kind}:{value}", detail={"note": args.note} if args.note else None,
                                       now=io.now)
    finally:
        context.close()
    return 0


def _list_revoked(args, io: _Io) -> int:
    try:
        context, store = _store(io)
    except _NoData as e:
        return io.fail(str(e))
    try:
        rows = [(r.kind, r.value, _iso(r.at), r.note) for r in store.list_revoked()]
    finally:
        context.close()
    _table(io.out, ("KIND", "VALUE", "REVOKED", "NOTE"), rows)
    return 0


def _pulls(args, io: _Io) -> int:
    if not ACCOUNT_RE.match(args.account):
        return io.fail(f"not an account id (32 lowercase hex): {args.account!r}")
    if args.repository is not None:
        name = NAME_RE.match(args.repository)
        if name is None:
            return io.fail(f"not a repository name (<account>/<name>): {args.repository!r}")
        if name["account"] != args.account:
            return io.fail(f"repository {args.repository} is not in account {args.account}")
    try:
        context, store = _store(io)
    except _NoData as e:
        return io.fail(str(e))
    try:
        if context.store().get_account(args.account) is None:
            return io.fail(str(UnknownAccount(args.account)))
        records = store.list_pulls(args.account, args.repository)
    finally:
        context.close()
    rows = [(r.device_id, r.repository, r.digest, _iso(r.at)) for r in records]
    _table(io.out, ("DEVICE", "REPOSITORY", "DIGEST", "PULLED"), rows)
    return 0


def _dev_certs(args, io: _Io) -> int:
    account = args.account or uuid.uuid4().hex
    try:
        paths = devcerts.write_dev_certs(args.directory, io.now, account, args.device_id, days=args.days,
                                         overwrite=args.force)
    except devcerts.DevCertsExist as e:
        return io.fail(f"{e} (use --force to replace them)")
    except ValueError as e:
        return io.fail(str(e))
    io.out.write(
        f"wrote development certificates to {paths.directory} (account {paths.account}, device {paths.device_id})\n"
        f"  server:  --tls-cert {paths.server_cert} --tls-key {paths.server_key} --device-ca {paths.ca_cert}\n"
        f"  clients: skopeo copy --src-cert-dir {paths.directory}, podman pull --cert-dir {paths.directory}, "
        f"curl --cacert {paths.ca_cert} --cert {paths.client_cert} --key {paths.client_key}\n"
    )
    return 0
