"""The ``localsync`` command.

Each subcommand lives in the module of the thing it runs; this file only routes to them, so
that ``localsync --help`` stays fast and a broken optional part cannot break the others.
Each module named here defines ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


class UsageError(Exception):
    """A mistake in a command's arguments or surroundings (a port in use, a file where a folder
    belongs): ``main`` prints it as one line, ``localsync NAME: error: ...``, and exits 2, as
    argparse does for its own checks. Subcommands raise it instead of letting a traceback out.
    """


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "localsync.demo",
        "worker processes syncing over a channel, persisted by a coordinator",
    ),
    "coordinator": ("localsync.coordinator", "persist a channel's content and serve it to joiners"),
    "hub": ("localsync.hub", "run a channel hub on a tcp:// address for several machines"),
    "serve": (
        "localsync.servers.serve",
        "serve WebSocket sync (TinyBase wire format) with persistence",
    ),
    "inspect": ("localsync.inspector", "print a persisted store as tables"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="localsync", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"localsync {name}", description=help_text)
    module.configure(command_parser)
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UsageError as error:
        command_parser.error(str(error))  # exits 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
