# -*- test-case-name: tests.test_cli -*-
"""
The one convention of the ``izreg`` command's handlers (L{izreg.cli},
L{izreg.devices_cli}, L{izreg.manage_cli}, L{izreg.ops_cli}, and any new
C{*_cli} module):

- a command group is a function C{register(subparsers)} that adds its
  parsers and sets C{handler=} on each (listed in L{izreg.cli.GROUPS});
- a handler is C{handler(args, context) -> int}: the parsed
  C{argparse.Namespace} and the L{izreg.cli.Context} (output through
  C{context.out(line)} and C{context.stderr}, the clock C{context.now()},
  the data only through C{context.store()}, C{.devices()}, C{.audit()},
  C{.webhooks()}, C{.token_key()}, C{.index()}); it returns the exit status
  (0, or 1 for "done, but found problems", like C{izreg fsck});
- an error is raised as L{CommandError} with a one-line message (no
  C{print}, no C{sys.exit} in a handler): L{izreg.cli.main} prints
  ``izreg: error: <message>`` on stderr and exits L{EXIT_ERROR}. The
  stores' own errors (unknown account or key, invalid name, LMDB and OS
  errors) are mapped the same way by L{one_line}: never a traceback.
"""

from __future__ import annotations

import datetime
import re
from typing import Callable, Sequence

from izreg.core.names import ACCOUNT_RE, NAME_RE, name_problem
from izreg.core.text import plural  # noqa: F401 (the commands take it from here)

#: exit status of every usage or data error
EXIT_ERROR = 2


class CommandError(Exception):
    """A one-line error for stderr; exit status L{EXIT_ERROR}."""


def one_line(error: BaseException) -> str:
    """The message printed for an error a handler raised (after ``izreg: error: ``)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, (CommandError, LookupError, ValueError)) and message:
        return message  # CommandError, the stores' UnknownAccount/UnknownKey/InvalidName: meant for people
    return f"{message} ({type(error).__name__})" if message else type(error).__name__


def account_id(text: str) -> str:
    """C{text} if it is an account id, else a L{CommandError}."""
    if not ACCOUNT_RE.fullmatch(text):
        raise CommandError(f"invalid account id {text[:80]!r}: expected 32 lowercase hex characters")
    return text


def repository_of(account: str, text: str) -> str:
    """The full name of repository C{text} of C{account}: C{NAME} or C{ACCOUNT_ID/NAME}; else a L{CommandError}."""
    name = text if re.match(r"[a-fA-F0-9]{32}/", text) else f"{account}/{text}"
    found = NAME_RE.fullmatch(name)
    if found is None:  # with capitals: that names are lowercase, and the name to use (names.name_problem)
        why = f"; {name_problem(name)}" if any("A" <= c <= "Z" for c in name) else ""
        raise CommandError(f"not a repository name (NAME or <account>/<name>): {text[:100]!r}{why}")
    if found["account"] != account:
        raise CommandError(f"repository {name} is not in account {account}")
    return name


def iso(when: float | None, never: str = "never") -> str:
    if when is None:
        return never
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(out: Callable[[str], None], header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell, one C{out(line)} per row."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
