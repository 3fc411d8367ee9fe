"""``localsync hub``: run a channel hub on a tcp:// address (see :mod:`localsync.channel.hub`)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

import zmq

from localsync.channel.hub import (
    DEFAULT_HWM,
    HUB_SUBSCRIBER_HWM,
    TcpHub,
    generate_keys,
    load_public_key,
)
from localsync.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``localsync hub``."""
    parser.add_argument(
        "--bind",
        metavar="tcp://HOST:PORT",
        help="publishers connect to PORT, subscribers to PORT+1; without --secret-key bind "
        "loopback or a private network only (no authentication)",
    )
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="socket high-water mark")
    parser.add_argument(
        "--subscriber-hwm",
        type=int,
        default=HUB_SUBSCRIBER_HWM,
        help="messages queued for one stalled subscriber before dropping (bounds memory)",
    )
    parser.add_argument(
        "--secret-key",
        metavar="FILE",
        help="the hub's .key_secret file: encrypt and authenticate with CURVE",
    )
    parser.add_argument(
        "--allow",
        metavar="DIR",
        help="with --secret-key: admit only the clients whose public .key files are in DIR",
    )
    parser.add_argument(
        "--keygen",
        metavar="DIR",
        help="write a key pair NAME.key / NAME.key_secret into DIR and exit",
    )
    parser.add_argument(
        "--name",
        type=_key_name,
        default="hub",
        help="with --keygen: the key pair's name (a file name: no path separator, no leading dot)",
    )
    parser.add_argument(
        "--force", action="store_true", help="with --keygen: replace an existing key pair"
    )


def _key_name(text: str) -> str:
    """argparse ``type`` for ``--name``: a plain file name, so the keys stay in the folder."""
    separators = {"/", os.sep, os.altsep or "/"}
    if not text or text.startswith(".") or "\0" in text or any(s in text for s in separators):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain file name (no path separator, no leading dot)"
        )
    return text


def _keygen(args: argparse.Namespace) -> int:
    folder = Path(args.keygen)
    existing = [
        path
        for path in (folder / f"{args.name}.key", folder / f"{args.name}.key_secret")
        if os.path.lexists(path)
    ]
    if existing and not args.force:
        raise UsageError(
            f"{existing[0]} exists: not replacing a key pair (give --force to replace it)"
        )
    try:
        public, secret = generate_keys(folder, args.name)
    except OSError as error:
        raise UsageError(f"cannot write keys into {folder}: {error.strerror or error}") from None
    key = load_public_key(public).decode("ascii")
    print(f"localsync hub: public key {key} in {public}, secret in {secret}", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the hub until SIGTERM/SIGINT, or write a key pair (``--keygen``).

    Raises :class:`UsageError` for ordinary mistakes (one line, exit status 2).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    if args.keygen is not None:
        return _keygen(args)
    if args.bind is None:
        raise UsageError("--bind tcp://HOST:PORT is required (or --keygen DIR)")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        hub = TcpHub(
            args.bind,
            hwm=args.hwm,
            secret_key=args.secret_key,
            allow=args.allow,
            subscriber_hwm=args.subscriber_hwm,
        )
        hub.start()
    except (ValueError, OSError, zmq.ZMQError) as error:
        raise UsageError(str(error)) from None
    keyed = f", CURVE key {hub.public_key}" if hub.public_key else ""
    print(f"localsync hub: publishers {hub.inbound}, subscribers {hub.outbound}{keyed}", flush=True)
    while not stop.wait(0.2):
        pass
    hub.stop()
    return 0
