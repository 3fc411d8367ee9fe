"""TinyBase's shared-socket protocol (subprotocol ``tinybase``): the sans-I/O state and the
server over real sockets. Interop with TinyBase's own client is in test_ws_interop.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from localsync.ws.multiplex import (
    ChannelMessage,
    MultiplexedSocket,
    Subscribe,
    Unsubscribe,
    channel_frame,
)
from localsync.ws.server import create_ws_server
from localsync.ws.wire import WireError
from tests import helpers

pytestmark = pytest.mark.timeout(60)


def control(request_id: str | None, kind: int, body: Any) -> str:
    return "S\n" + json.dumps([request_id, -1, [kind, body]], separators=(",", ":"))


HELLO = control("h1", 0, 1)


def negotiated(base: str = "shop") -> MultiplexedSocket:
    socket = MultiplexedSocket(base)
    assert socket.feed(HELLO) == ([], [HELLO])
    return socket


def closes_with(socket: MultiplexedSocket, payload: str) -> tuple[int, str]:
    with pytest.raises(WireError) as caught:
        socket.feed(payload)
    # once closing, the socket ignores the rest
    assert socket.feed(HELLO) == ([], [])
    return caught.value.code, caught.value.reason


def test_hello_then_subscribe_answers_and_joins_the_channel_room() -> None:
    socket = negotiated()
    subscribe = control("r1", 1, "pets")
    assert socket.feed(subscribe) == ([Subscribe("pets", "shop/pets")], [subscribe])
    # subscribing again is answered, nothing else
    assert socket.feed(control("r2", 1, "pets")) == ([], [control("r2", 1, "pets")])
    assert MultiplexedSocket("").path_id("a/b") == "a/b"


def test_channel_controls_before_the_hello_are_ignored_and_messages_refused() -> None:
    socket = MultiplexedSocket("shop")
    assert socket.feed(control("r1", 1, "pets")) == ([], [])
    assert closes_with(socket, channel_frame("pets", '\n[null,1,""]')) == (1007, "tinybase:14")


def test_channel_payloads_are_decoded_per_channel_and_unsubscribe_leaves() -> None:
    socket = negotiated()
    socket.feed(control("r1", 1, "pets"))
    events, answers = socket.feed(channel_frame("pets", '\n[null,1,""]'))
    assert answers == []
    [event] = events
    assert isinstance(event, ChannelMessage) and event.channel_id == "pets"
    assert (event.message.client_id, event.message.message, event.message.body) == ("", 1, "")
    # unsubscribing is not answered; the channel is then unknown
    assert socket.feed(control(None, 2, "pets")) == ([Unsubscribe("pets")], [])
    assert socket.feed(control(None, 2, "pets")) == ([], [])
    assert closes_with(socket, channel_frame("pets", '\n[null,1,""]'))[0] == 1007


@pytest.mark.parametrize(
    "payload",
    [
        "garbage",
        "S\nnot json",
        control("r", 0, 2),  # another protocol version
        control(None, 1, "pets"),  # a subscription needs a request id
        control("r", 2, "pets"),  # an unsubscription has none
        control("r", 1, "a/../b"),
        control("r", 1, "a?b"),
        control("r", 1, ""),
        channel_frame("a//b", '\n[null,1,""]'),
        channel_frame("unknown", '\n[null,1,""]'),
        "M\nno-second-newline",
    ],
)
def test_anything_unexpected_closes_with_1007(payload: str) -> None:
    assert closes_with(negotiated(), payload) == (1007, "tinybase:14")


def test_limits_close_with_1013() -> None:
    socket = negotiated()
    for i in range(100):
        socket.feed(control(f"r{i}", 1, f"c{i}"))
    assert closes_with(socket, control("r", 1, "one-too-many")) == (1013, "tinybase:15:channels")
    long_id = "x" * 1025
    assert closes_with(negotiated(), control("r", 1, long_id)) == (1013, "tinybase:15:channels")
    assert closes_with(negotiated(), channel_frame(long_id, "\n[]")) == (
        1013,
        "tinybase:15:channels",
    )
    assert closes_with(negotiated(), "M\n" + "x" * (16 * 1024 * 1024)) == (
        1013,
        "tinybase:15:socket",
    )


def test_the_fragment_budget_is_shared_by_the_channels() -> None:
    socket = negotiated()
    socket.feed(control("r1", 1, "a"))
    socket.feed(control("r2", 1, "b"))
    # 100 partial messages in all (50 per channel) are the most a socket may hold
    for channel in ("a", "b"):
        for i in range(50):
            message_id = f"{i:016d}"
            assert socket.feed(channel_frame(channel, f"\n{message_id}\n0\n2\n[nu")) == ([], [])
    with pytest.raises(WireError) as caught:
        socket.feed(channel_frame("a", f"\n{'z' * 16}\n0\n2\n[nu"))
    assert (caught.value.code, caught.value.reason) == (1013, "tinybase:15:fragments")


# ------------------------------------------------------------------------ over real sockets


async def _shared(url: str) -> Any:
    ws = await connect(url, subprotocols=["tinybase"])  # type: ignore[list-item]
    assert ws.subprotocol == "tinybase"
    await ws.send(HELLO)
    assert await ws.recv() == HELLO
    return ws


def test_the_server_relays_between_a_shared_socket_and_legacy_clients() -> None:
    async def scenario() -> None:
        server = await create_ws_server("127.0.0.1", 0)
        try:
            shared = await _shared(f"ws://127.0.0.1:{server.port}/shop")
            await shared.send(control("r1", 1, "pets"))
            assert await shared.recv() == control("r1", 1, "pets")
            socket_id = server.get_client_ids("shop/pets")[0]
            legacy = await connect(f"ws://127.0.0.1:{server.port}/shop/pets")
            await helpers.eventually(lambda: len(server.get_client_ids("shop/pets")) == 2)
            # the shared socket's channel message reaches the room's legacy client ...
            await shared.send(channel_frame("pets", '\n[null,1,""]'))
            assert await asyncio.wait_for(legacy.recv(), 5) == f'{socket_id}\n[null,1,""]'
            # ... and a legacy client's broadcast comes back wrapped for the channel
            await legacy.send("\n[null,2,[1,2]]")
            received = await asyncio.wait_for(shared.recv(), 5)
            assert str(received).startswith("M\npets\n") and received.endswith("\n[null,2,[1,2]]")
            # unsubscribing leaves the room
            await shared.send(control(None, 2, "pets"))
            await helpers.eventually(lambda: socket_id not in server.get_client_ids("shop/pets"))
            # an invalid frame closes the whole socket with TinyBase's code
            await shared.send("garbage")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(shared.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
            assert server.get_stats()["invalid"] == 1
            await legacy.close()
        finally:
            await server.destroy()

    helpers.run(scenario(), 30)


def test_each_channel_room_is_authenticated_and_closing_leaves_every_room() -> None:
    async def scenario() -> None:
        allowed = {"", "open", "also"}
        server = await create_ws_server(
            "127.0.0.1", 0, authenticate=lambda path_id, _request: path_id in allowed
        )
        try:
            shared = await _shared(f"ws://127.0.0.1:{server.port}/")
            for i, channel in enumerate(("open", "also")):
                await shared.send(control(f"r{i}", 1, channel))
                assert await shared.recv() == control(f"r{i}", 1, channel)
            assert sorted(server.get_path_ids()) == ["also", "open"]
            await shared.send(control("r9", 1, "secret"))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(shared.recv(), 5)
            # the socket is gone, and with it its place in every room
            await helpers.eventually(lambda: server.get_path_ids() == [])
            assert "secret" not in server.get_path_ids()
            assert server.get_stats()["rejected"] == 1
        finally:
            await server.destroy()

    helpers.run(scenario(), 30)
