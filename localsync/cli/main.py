"""The ``localsync`` command.

Each subcommand lives in its own module of this package (``localsync/cli/demo.py``,
``coordinator.py``, ``hub.py``, ``serve.py``, ``inspect.py``), which drives the library code
it runs (a channel's hub or coordinator, a WebSocket server, a persister); this file only
routes to them, importing the one asked for, so that ``localsync --help`` stays fast and a
broken optional part cannot break the others. Each module named here defines
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args: argparse.Namespace)
-> int``.

Ordinary mistakes (a port in use, a host that does not resolve, a file where a folder
belongs) end as one line on stderr, ``localsync NAME: error: ...``, with exit status 2, as
argparse does for its own checks: a subcommand raises :class:`UsageError` for them. Output
piped into a reader that stops early (``localsync inspect DIR | head``) ends quietly, with
exit status 1, as Python's documentation advises for a broken pipe.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from localsync.errors import UsageError

#: what ``localsync --help`` says about the command (plain text: argparse prints it as is)
DESCRIPTION = (
    "localsync: TinyBase-compatible MergeableStores synchronized between Python processes "
    "(channels, a tcp hub) and over WebSockets, persisted to files or SQLite."
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless there is none to show (None, False)
    or the help text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def port_number(text: str) -> int:
    """argparse ``type`` for a TCP port: an integer in 0..65535 (0: any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def version() -> str:
    """The installed distribution's version (``importlib.metadata``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("localsync")
    except PackageNotFoundError:
        return "unknown (not installed)"


# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "localsync.cli.demo",
        "worker processes syncing over a channel, persisted by a coordinator",
    ),
    "coordinator": (
        "localsync.cli.coordinator",
        "persist a channel's content and serve it to joiners",
    ),
    "hub": ("localsync.cli.hub", "run a channel hub on a tcp:// address for several machines"),
    "serve": (
        "localsync.cli.serve",
        "serve WebSocket sync (TinyBase wire format) with persistence",
    ),
    "inspect": (
        "localsync.cli.inspect",
        "print a persisted store as tables (--web CHANNEL: a live page for a channel)",
    ),
}


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away: point stdout at devnull so that the interpreter's own
    flush at exit finds nothing to fail on (Python's docs, "Note on SIGPIPE"), exit 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or not a file
        pass
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="localsync", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"localsync {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help, the version or the error; exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(
        prog=f"localsync {name}", description=help_text, formatter_class=HelpFormatter
    )
    module.configure(command_parser)
    args = command_parser.parse_args(argv[1:])
    try:
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # (a broken pipe shows here rather than at exit)
    except UsageError as error:
        print(f"{command_parser.prog}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    return status
