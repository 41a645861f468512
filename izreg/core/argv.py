# -*- test-case-name: tests.test_cli -*-
"""A command line's own options taken also after its subcommand (the izreg and izreg-edge commands)."""

from __future__ import annotations

from typing import Sequence


def options_first(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """
    C{argv} with C{options} (the command's own options that take a value, C{--config}, and their values)
    moved before the subcommand, so that C{izreg gc --dry-run --config F} means C{izreg --config F gc
    --dry-run}: after the subcommand argparse refused them ("unrecognized arguments: --data-dir <the account
    id>"), which read as if the option did not exist. Nothing after C{--} is moved, nor an option with no
    value left (argparse says so where it is).
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.split("=", 1)[0] not in options or ("=" not in arg and i + 1 == len(argv)):
            rest.append(arg)
            i += 1
        else:
            taken = 1 if "=" in arg else 2
            front.extend(argv[i:i + taken])
            i += taken
    return front + rest
