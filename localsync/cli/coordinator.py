"""``localsync coordinator``: persist a channel (see :mod:`localsync.channel.coordinator`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from localsync.channel.coordinator import (
    OWNER_WAIT_SECONDS,
    PERSISTERS,
    Coordinator,
    check_postgres,
    is_postgres_url,
    owner_file,
)
from localsync.channel.runtime import RuntimeDirError, validate_channel_name
from localsync.channel.synchronizer import check_hub
from localsync.errors import ChannelError, ChannelTakenError, PersistError, UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``localsync coordinator``."""
    parser.add_argument("--channel", required=True, help="channel name")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR|URL",
        help="folder for the data file, or a postgresql:// URL (table tinybase_CHANNEL)",
    )
    parser.add_argument("--persister", choices=PERSISTERS, default="sqlite")
    parser.add_argument(
        "--hub",
        metavar="tcp://HOST:PORT|nats://HOST:PORT[,...]",
        help="external hub, or NATS servers (comma-separated: nodes of a cluster); "
        "default: a local channel",
    )
    parser.add_argument("--runtime-dir", help="private runtime folder (default: see docs)")
    parser.add_argument(
        "--owner-wait",
        type=float,
        default=OWNER_WAIT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for a previous coordinator of the same data file to exit "
        f"(default {OWNER_WAIT_SECONDS:g})",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop (final save, exit 0) when the process that started this one ends",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the channel until SIGTERM/SIGINT; 1 when it could not (or the final save failed).

    Raises :class:`UsageError` for ordinary mistakes (one line, exit status 2).
    """
    data = Path(args.data)
    if not is_postgres_url(args.data) and data.exists() and not data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    if not math.isfinite(args.owner_wait) or args.owner_wait < 0:
        raise UsageError(f"--owner-wait must be a finite number >= 0, got {args.owner_wait}")
    try:
        validate_channel_name(args.channel)
    except ValueError as error:
        raise UsageError(f"--channel: {error}") from None
    if args.hub is not None:
        try:
            check_hub(args.hub)
        except ValueError as error:
            raise UsageError(f"--hub: {error}") from None
    if is_postgres_url(args.data):
        problem = check_postgres(args.data)  # once, at start: down, refused, malformed
        if problem is not None:
            raise UsageError(f"--data: {problem}")
    try:
        coordinator = Coordinator(
            args.channel,
            args.data,
            args.persister,
            hub=args.hub,
            runtime_dir=args.runtime_dir,
            owner_wait_seconds=args.owner_wait,
            exit_with_parent=args.exit_with_parent,
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    try:
        try:
            owner_file(args.channel, args.runtime_dir, args.hub)  # the runtime folder's checks
        except ValueError as error:  # e.g. socket paths too long for that runtime folder
            raise UsageError(str(error)) from None
        coordinator.run()
    except ChannelTakenError as error:
        raise UsageError(str(error)) from None
    except PersistError as error:
        if coordinator.postgres_url is None:
            raise
        # the database is down or refuses the credentials (the message has no password)
        raise UsageError(str(error)) from None
    except (ChannelError, RuntimeDirError, OSError) as error:
        print(f"localsync coordinator: {error}", file=sys.stderr)
        return 1
    if coordinator.final_save_failed:
        print("localsync coordinator: the final save failed (see the log)", file=sys.stderr)
        return 1
    return 0
