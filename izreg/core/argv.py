# -*- test-case-name: tests.test_cli -*-
"""A command line's own options taken also after its subcommand (the izreg and izreg-edge commands)."""

from __future__ import annotations

import argparse
from typing import Sequence


class MissingValue(ValueError):
    """An option that takes a value given last, with none (argparse's own words for it)."""

    def __init__(self, option: str) -> None:
        super().__init__(f"argument {option}: expected one argument")
        self.option = option


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str], options: Sequence[str]) -> argparse.Namespace:
    """C{parser.parse_args} of L{options_first}(C{argv}, C{options}); an option of C{options} with no value: a usage error."""
    try:
        moved = options_first(argv, options)
    except MissingValue as e:
        parser.error(str(e))
    return parser.parse_args(moved)


def options_first(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """
    C{argv} with C{options} (the command's own options that take a value, C{--config}, and their values)
    moved before the subcommand, so that C{izreg gc --dry-run --config F} means C{izreg --config F gc
    --dry-run}: after the subcommand argparse refused them ("unrecognized arguments: --data-dir <the account
    id>"), which read as if the option did not exist. Nothing after C{--} is moved. One of C{options} given
    last, with no value, raises L{MissingValue}: left where it was, argparse took it for an unknown argument
    ("unrecognized arguments: --data-dir") or left it out ("the following arguments are required: ACCOUNT_ID"),
    and moved before the command it would take the command for its value.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg.split("=", 1)[0] not in options:
            rest.append(arg)
            i += 1
        elif "=" not in arg and i + 1 == len(argv):
            raise MissingValue(arg)
        else:
            taken = 1 if "=" in arg else 2
            front.extend(argv[i:i + taken])
            i += taken
    return front + rest
