# -*- test-case-name: tests.test_devices_cli -*-
"""
The C{izreg device ...} and C{izreg dev-certs} subcommands.

L{add_subparsers} registers them on the C{izreg} command's subparsers with
the handler convention of L{izreg.commands} (C{handler(args, context) ->
int}, errors raised as C{CommandError}). They may run while the server does
(LMDB is multi-process safe); a revocation applies to the device's next
request.
"""

from __future__ import annotations

import argparse
import os
import uuid

from cryptography import x509

from izreg.auth.devices import fingerprint_sha256, normalize_fingerprint, normalize_serial, serial_hex
from izreg.auth.devicestore import FINGERPRINT, SERIAL
from izreg.auth.store import UnknownAccount
from izreg.commands import CommandError, account_id, iso, repository_of, table
from izreg import devcerts


def add_subparsers(subparsers: argparse._SubParsersAction) -> None:
    """Register C{device} (revoke, unrevoke, list-revoked, pulls) and C{dev-certs}."""
    device = subparsers.add_parser("device", help="device certificates: revocation and pull records")
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)

    revoke = sub.add_parser("revoke", help="revoke a device certificate (applies on its next request)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="certificate serial number (hex; colons allowed)")
    which.add_argument("--fingerprint", metavar="SHA256", help="SHA-256 fingerprint of the certificate (hex)")
    which.add_argument("--cert", metavar="PEM", help="a certificate file: revoke its serial and fingerprint")
    revoke.add_argument("--note", default="", help="why (shown by list-revoked)")
    revoke.set_defaults(handler=_revoke)

    unrevoke = sub.add_parser("unrevoke", help="take back a revocation (same selectors as revoke)")
    which = unrevoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="certificate serial number (hex; colons allowed)")
    which.add_argument("--fingerprint", metavar="SHA256", help="SHA-256 fingerprint of the certificate (hex)")
    which.add_argument("--cert", metavar="PEM", help="a certificate file: its serial and fingerprint")
    unrevoke.set_defaults(note="", handler=_revoke)

    listing = sub.add_parser("list-revoked", help="list revoked serials and fingerprints")
    listing.set_defaults(handler=_list_revoked)

    pulls = sub.add_parser("pulls", help="which device pulled which manifest, and when (last pull)")
    pulls.add_argument("account", metavar="ACCOUNT_ID")
    pulls.add_argument("--repository", metavar="NAME", help="only this repository: NAME or ACCOUNT_ID/NAME")
    pulls.set_defaults(handler=_pulls)

    dev = subparsers.add_parser(
        "dev-certs", help="write a development CA, server and device certificate (the CA of DIR, or of --ca, is reused)")
    dev.add_argument("directory", metavar="DIR", help="output directory (a skopeo --src-cert-dir, podman --cert-dir)")
    dev.add_argument("--ca", metavar="CA_DIR",
                     help="issue the device from the CA of this earlier dev-certs directory (DIR gets ca.crt,"
                          " client.cert and client.key; default: DIR's own CA if it has one, else a new CA)")
    dev.add_argument("--account", metavar="ACCOUNT_ID",
                     help="the device's account: yours, as `izreg account list` shows it (default: a new random id,"
                          " which no account has: the registry refuses that device's pulls)")
    dev.add_argument("--device-id", metavar="ID", default=devcerts.DEFAULT_DEVICE_ID,
                     help=f"the device's id, its certificate's CN (default: {devcerts.DEFAULT_DEVICE_ID})")
    dev.add_argument("--days", type=float, default=devcerts.DEFAULT_DAYS, help=f"validity of the leaf certificates, in days (default: {devcerts.DEFAULT_DAYS})")
    dev.add_argument("--host", metavar="NAME", action="append", default=[],
                     help="a DNS name or IP address the server certificate names too, beside"
                          f" {', '.join(devcerts.SERVER_NAMES)} (repeat for more; a name clients reach the registry"
                          " by, for a lab cluster behind a real host name)")
    dev.add_argument("--force", action="store_true",
                     help="replace DIR's device certificate; its CA and server certificate stay (remove DIR for new ones)")
    dev.set_defaults(handler=_dev_certs)


def _revoke(args, context) -> int:
    targets: list[tuple[str, str]] = []
    if args.cert:
        try:
            with open(args.cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot read a PEM certificate from {args.cert}: {e}") from None
        targets = [(SERIAL, serial_hex(cert)), (FINGERPRINT, fingerprint_sha256(cert))]
    elif args.serial is not None:
        targets = [(SERIAL, args.serial)]
    else:
        targets = [(FINGERPRINT, args.fingerprint)]
    try:
        targets = [(kind, normalize_serial(v) if kind == SERIAL else normalize_fingerprint(v)) for kind, v in targets]
    except ValueError as e:
        raise CommandError(str(e)) from None
    store, now = context.devices(), context.now()
    for kind, value in targets:
        if args.device_command == "unrevoke":
            done = store.unrevoke(kind, value)
            context.out(f"{'unrevoked' if done else 'was not revoked'}: {kind} {value}")
        else:
            done = store.revoke(kind, value, now, args.note)
            context.out(f"{'revoked' if done else 'already revoked'}: {kind} {value}")
        if done:
            context.audit().record(action=f"device-{args.device_command}", account=None, actor="cli",
                                   target=f"{kind}:{value}", detail={"note": args.note} if args.note else None,
                                   now=now)
    return 0


def _list_revoked(args, context) -> int:
    rows = [(r.kind, r.value, iso(r.at), r.note) for r in context.devices().list_revoked()]
    table(context.out, ("KIND", "VALUE", "REVOKED", "NOTE"), rows)
    return 0


def _pulls(args, context) -> int:
    try:
        account = account_id(args.account)
    except CommandError:
        raise CommandError(f"not an account id (32 lowercase hex): {args.account!r}") from None
    repository = None if args.repository is None else repository_of(account, args.repository)
    store = context.devices()
    if context.store().get_account(account) is None:
        raise UnknownAccount(account)
    records = store.list_pulls(account, repository)
    rows = [(r.device_id, r.repository, r.digest, iso(r.at)) for r in records]
    table(context.out, ("DEVICE", "REPOSITORY", "DIGEST", "PULLED"), rows)
    if not rows:
        # on stderr, so a script reading the table sees only the table
        context.stderr.write(f"{NO_PULLS}; the server writes them every {context.config.pull_flush_interval} s"
                             " ([devices] pull_flush_interval)\n")
    return 0


#: Why C{izreg device pulls} may list nothing right after a pull (an access key's pull, a write not due yet).
NO_PULLS = ("no device pulls recorded: only pulls with a device certificate count (over TLS, or reported by an"
            " edge gateway), not pulls with an access key")


def _dev_certs(args, context) -> int:
    account = args.account or uuid.uuid4().hex
    try:
        paths = devcerts.write_dev_certs(args.directory, context.now(), account, args.device_id, days=args.days,
                                         hosts=args.host, overwrite=args.force, ca_dir=args.ca)
    except devcerts.DevCertsExist as e:
        raise CommandError(f"{e}: another device from its CA: izreg dev-certs OTHER_DIR --ca {args.ca or args.directory}"
                           f" --account {args.account or 'ACCOUNT_ID'} --device-id ID; --force replaces them (the CA stays)") from None
    except ValueError as e:  # DevCertsError too
        raise CommandError(str(e)) from None
    directory, home = paths.directory, paths.ca_dir
    if not paths.ca_reused:
        issuer = f"a new CA ({paths.ca_cert}; its key {paths.ca_key}) and a server certificate ({paths.server_cert})"
    elif home != directory:
        issuer = f"the CA of {home} ({paths.ca_key})"
    else:
        issuer = (f"the CA of {home} ({paths.ca_key})"
                  + (f" and a server certificate ({paths.server_cert})" if paths.server_issued
                     else f"; kept the server certificate ({paths.server_cert})"))
    lines = [f"wrote development certificates to {directory} (account {paths.account}, device {paths.device_id})",
             f"  issued by {issuer}"]
    if paths.server_issued:
        lines.append(f"  the server certificate names {', '.join(devcerts.server_names(args.host))}"
                     + ("" if args.host else " (--host NAME for the name clients reach it by)"))
    if not args.account:
        lines.append(f"  account {paths.account} was made up (no --account): no account has it, so the registry"
                     f" refuses this device's pulls; for a device of your account: izreg dev-certs {directory} --force"
                     " --account ACCOUNT_ID (izreg account list shows the ids)")
    lines += [
        f"  server:  --tls-cert {paths.server_cert} --tls-key {paths.server_key} --device-ca"
        f" {os.path.join(home, devcerts.CA_CERT)}" + (" (a server started so trusts this device already)"
                                                     if home != directory else ""),
        f"  clients: skopeo copy --src-cert-dir {directory}, podman pull --cert-dir {directory}, "
        f"curl --cacert {paths.ca_cert} --cert {paths.client_cert} --key {paths.client_key}",
        f"  another device from this CA: izreg dev-certs OTHER_DIR --ca {home}"
        f" --account {paths.account if args.account else 'ACCOUNT_ID'} --device-id ID",
    ]
    context.out("\n".join(lines))
    return 0
