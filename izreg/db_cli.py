# -*- test-case-name: tests.test_db_cli -*-
"""
``izreg db upgrade`` and ``izreg db status``: the PostgreSQL metadata
database's schema (L{izreg.storage.pg}), reached like every ``izreg``
command through ``--config`` (``[metadata] dsn``) or ``$IZREG_DATABASE_URL``.

``upgrade`` applies every migration the database lacks, in order, each in
its own transaction (or, one marked ``-- izreg: no-transaction``, statement
by statement: L{izreg.storage.pg}), under an advisory lock (two nodes upgrading at once
do not collide); a database already up to date is left as it is. It
refuses a database whose schema is newer than this izreg knows.
``status`` prints the database's schema version and this izreg's; its
exit status is 0 when they match, 1 when an upgrade is due (or the
database is newer), 2 on an error.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("db", help="the PostgreSQL metadata database: schema upgrade and status")
    commands = group.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = commands.add_parser("upgrade", help="create or migrate the schema (safe to run again, and from any node)")
    upgrade.set_defaults(handler=db_upgrade)
    status = commands.add_parser("status", help="the schema version of the database and of this izreg")
    status.set_defaults(handler=db_status)


def _database(context):
    from izreg.commands import CommandError
    from izreg.service.backends import BackendError, open_database
    from izreg.storage.pg import dsn_from

    if context.config.metadata_backend != "postgresql" and not dsn_from(context.config.metadata_dsn):
        # the default registry (LMDB): "needs metadata.dsn" told its user to set up a database it does not use
        raise CommandError(NOT_POSTGRESQL)
    try:
        return open_database(context.config, max_size=1, command=True)
    except BackendError as e:
        raise CommandError(str(e)) from None


def db_upgrade(args: argparse.Namespace, context) -> int:
    from izreg.commands import CommandError
    from izreg.storage.pg import DatabaseUnavailable, SchemaError

    db = _database(context)
    try:
        before, after = db.upgrade(log=lambda line: context.out(line))
    except (SchemaError, DatabaseUnavailable) as e:
        raise CommandError(str(e)) from None
    finally:
        db.close()
    if before == after:
        context.out(f"the database is up to date (schema version {after})")
    else:
        context.out(f"upgraded the database from schema version {before} to {after}")
    return 0


def db_status(args: argparse.Namespace, context) -> int:
    from izreg.commands import CommandError
    from izreg.storage.pg import DatabaseUnavailable, SchemaError, latest_version

    db = _database(context)
    try:
        found = db.version()
        try:
            db.check()
            verdict, status = "up to date", 0
        except SchemaError as e:
            verdict, status = str(e), 1
    except DatabaseUnavailable as e:
        raise CommandError(str(e)) from None
    finally:
        db.close()
    # a schema error already names both versions and what to do
    context.out(verdict if status else f"database schema version {found}; this izreg's {latest_version()}: {verdict}")
    return status


#: C{izreg db} on a registry whose metadata is in LMDB (the default), with no database named either
NOT_POSTGRESQL = ("izreg db is for a PostgreSQL metadata database ([metadata] backend = \"postgresql\","
                  " docs/deploy.rst); this registry's metadata is in LMDB, whose index the server upgrades itself when it starts:"
                  " nothing to do. For a database, give --config with [metadata] dsn, or $IZREG_DATABASE_URL")
