"""Prometheus metrics and a health check for sync servers, and metrics for channel participants.

Every scrape reads the live state (``get_stats()`` and friends): nothing is counted twice, and
each collector has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one), so several servers in one process do not collide.

A server (standalone or ASGI) serves them as routes::

    server.add_route(metrics_route(server))   # GET /metrics (the server's token, if any)
    server.add_route(health_route(server))    # GET /healthz (no auth)

``/metrics`` is a normal ``auth=True`` route: with ``token=`` set, Prometheus must send it
(``authorization: {credentials: ...}`` in its scrape config, i.e. ``Authorization: Bearer``;
``?token=`` works too); an ``authenticate`` hook is asked with the name ``"metrics"``.
``/healthz`` answers 200 with JSON (``status``, ``paths``, ``rooms``, ``clients``) while the
server runs and 503 once it is shutting down (the standalone server stops listening then).

A channel participant serves its own port: ``handle = serve_metrics(synchronizer)``,
``handle.url``, ``handle.close()``.

Server metrics (label ``path`` is the room's path id):

=======================================  =======  ======  =========================================
name                                     type     labels  meaning
=======================================  =======  ======  =========================================
localsync_clients                        gauge    path    clients connected to the room
localsync_paths                          gauge            rooms with at least one client
localsync_rooms                          gauge            rooms, including those whose store is
                                                          stopping
localsync_connections_total              counter          WebSocket connections served (routes
                                                          excluded)
localsync_messages_received_total        counter          sync messages received from clients
localsync_messages_sent_total            counter          sync messages queued to clients
localsync_bytes_received_total           counter          payload characters received
localsync_bytes_sent_total               counter          payload bytes queued to clients
localsync_ignored_total                  counter  reason  input refused or dropped: ``invalid``
                                                          (bad frames, closed 1007), ``overflow``
                                                          (size and queue limits, closed 1013),
                                                          ``rejected`` (HTTP requests and upgrades
                                                          refused), ``rooms_refused`` (room limits)
localsync_rooms_discarded_total          counter          empty rooms whose files were discarded
localsync_persister_loads_total          counter  path    loads of the room's store
localsync_persister_saves_total          counter  path    saves of the room's store
localsync_persister_load_failures_total  counter  path    loads that failed
localsync_persister_save_failures_total  counter  path    saves that failed
localsync_persister_unsaved_seconds      gauge    path    age of the oldest change not yet saved
                                                          (0: all saved; grows while saves fail)
=======================================  =======  ======  =========================================

The ``localsync_persister_*`` series exist while the room's store runs (servers with
``create_persister``): they restart from 0 when the store restarts, which Prometheus's
``rate()`` treats as a counter reset.

Channel participant metrics (label ``channel`` is the channel name):

=========================================  =======  ===============  ==============================
name                                       type     labels           meaning
=========================================  =======  ===============  ==============================
localsync_channel_messages_sent_total      counter  channel          messages published
localsync_channel_messages_received_total  counter  channel          messages received from peers
localsync_channel_ignored_total            counter  channel, reason  messages dropped: ``invalid``
                                                                     (could not be decoded)
localsync_channel_hub_generation           gauge    channel          the local hub's generation
localsync_channel_hub_failovers_total      counter  channel          hubs replaced while this
                                                                     participant ran
localsync_sync_sends_total                 counter  channel          protocol messages the engine
                                                                     sent
localsync_sync_receives_total              counter  channel          protocol messages it handled
localsync_sync_loads_total                 counter  channel          changes taken from peers (a
                                                                     synchronizer's loads)
localsync_sync_saves_total                 counter  channel          local changes sent to peers
                                                                     (its saves)
localsync_sync_load_failures_total         counter  channel          loads that failed
localsync_sync_save_failures_total         counter  channel          sends that failed
localsync_sync_unsaved_seconds             gauge    channel          age of the oldest local change
                                                                     not yet sent
localsync_persister_*                      (above)  channel          the store's own persister,
                                                                     when one is given
=========================================  =======  ===============  ==============================
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from websockets.http11 import Request

from localsync.ws.http import HttpReply, Route

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from localsync.ws.server import WsServer

__all__ = [
    "CONTENT_TYPE",
    "ChannelCollector",
    "MetricsHandle",
    "ServerCollector",
    "health_route",
    "metrics_route",
    "serve_metrics",
]

#: the Prometheus text format ``generate_latest`` writes
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# server stats -> localsync_ignored_total{reason}
_IGNORED_REASONS = {
    "invalid": "invalid",
    "overflows": "overflow",
    "rejected": "rejected",
    "rooms_refused": "rooms_refused",
}
# channel transport stats -> localsync_channel_ignored_total{reason}
_CHANNEL_IGNORED = {"ignored": "invalid"}  # ("own_dropped", our own echoes, is routine)


class PersisterLike(Protocol):
    """What the metrics read from a persister (any :class:`localsync.sync.persister.Persister`)."""

    def get_stats(self) -> Mapping[str, float]: ...


class ChannelSynchronizerLike(PersisterLike, Protocol):
    """What the metrics read from a channel synchronizer."""

    def get_channel_name(self) -> str: ...

    def get_channel_stats(self) -> Mapping[str, int]: ...

    def get_synchronizer_stats(self) -> Mapping[str, int]: ...


def _counter(name: str, doc: str, value: float, labels: list[str] | None = None) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    if labels is None:
        family.add_metric([], value)
    return family


def persister_families(
    prefix: str, label: str, stats_by_label: Mapping[str, Mapping[str, float]]
) -> list[Metric]:
    """``<prefix>_loads_total`` ... ``<prefix>_unsaved_seconds`` for persisters keyed by label."""
    families: list[CounterMetricFamily | GaugeMetricFamily] = [
        CounterMetricFamily(f"{prefix}_loads", "Loads of the store.", labels=[label]),
        CounterMetricFamily(f"{prefix}_saves", "Saves of the store.", labels=[label]),
        CounterMetricFamily(f"{prefix}_load_failures", "Loads that failed.", labels=[label]),
        CounterMetricFamily(f"{prefix}_save_failures", "Saves that failed.", labels=[label]),
        GaugeMetricFamily(
            f"{prefix}_unsaved_seconds",
            "Age of the oldest change not yet saved (0: all saved).",
            labels=[label],
        ),
    ]
    keys = ("loads", "saves", "load_failures", "save_failures", "unsaved_seconds")
    for value, stats in stats_by_label.items():
        for family, key in zip(families, keys, strict=True):
            family.add_metric([value], float(stats.get(key, 0)))
    return list(families)


class ServerCollector(Collector):
    """A server's metrics (see the module docstring), read from it at every scrape."""

    def __init__(self, server: WsServer) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        server = self._server
        stats = server.get_stats()
        clients = GaugeMetricFamily(
            "localsync_clients", "Clients connected to the room.", labels=["path"]
        )
        for path_id in server.get_path_ids():
            clients.add_metric([path_id], len(server.get_client_ids(path_id)))
        yield clients
        yield GaugeMetricFamily("localsync_paths", "Rooms with clients.", value=stats["paths"])
        yield GaugeMetricFamily(
            "localsync_rooms", "Rooms, including stores still stopping.", value=stats["rooms"]
        )
        yield _counter(
            "localsync_connections", "WebSocket connections served.", stats["connections"]
        )
        for direction in ("received", "sent"):
            yield _counter(
                f"localsync_messages_{direction}",
                f"Sync messages {direction}.",
                stats[f"messages_{direction}"],
            )
            yield _counter(
                f"localsync_bytes_{direction}",
                f"Payload bytes {direction}.",
                stats[f"bytes_{direction}"],
            )
        ignored = CounterMetricFamily(
            "localsync_ignored", "Input refused or dropped, by reason.", labels=["reason"]
        )
        for key, reason in _IGNORED_REASONS.items():
            ignored.add_metric([reason], stats[key])
        yield ignored
        yield _counter(
            "localsync_rooms_discarded",
            "Empty rooms whose files were discarded.",
            stats["rooms_discarded"],
        )
        yield from persister_families("localsync_persister", "path", server.get_persister_stats())


class ChannelCollector(Collector):
    """A channel participant's metrics (see the module docstring), read at every scrape.

    Runs on the metrics server's thread: it only reads counters (no store access).
    """

    def __init__(
        self, synchronizer: ChannelSynchronizerLike, persister: PersisterLike | None = None
    ) -> None:
        self._synchronizer = synchronizer
        self._persister = persister
        self._channel = synchronizer.get_channel_name()

    def collect(self) -> Iterable[Metric]:
        sync, channel = self._synchronizer, self._channel
        labels = ["channel"]
        stats = sync.get_channel_stats()
        for key, name in (("sent", "sent"), ("received", "received")):
            family = CounterMetricFamily(
                f"localsync_channel_messages_{name}", f"Channel messages {name}.", labels=labels
            )
            family.add_metric([channel], stats.get(key, 0))
            yield family
        ignored = CounterMetricFamily(
            "localsync_channel_ignored",
            "Channel messages dropped, by reason.",
            labels=["channel", "reason"],
        )
        for key, reason in _CHANNEL_IGNORED.items():
            ignored.add_metric([channel, reason], stats.get(key, 0))
        yield ignored
        generation = GaugeMetricFamily(
            "localsync_channel_hub_generation", "The local hub's generation.", labels=labels
        )
        generation.add_metric([channel], stats.get("hub_generation", 0))
        yield generation
        failovers = CounterMetricFamily(
            "localsync_channel_hub_failovers", "Hubs replaced.", labels=labels
        )
        failovers.add_metric([channel], stats.get("hub_failovers", 0))
        yield failovers
        unanswering = CounterMetricFamily(
            "localsync_channel_peers_unanswering",
            "Peers taken for gone after an unanswered liveness probe.",
            labels=labels,
        )
        unanswering.add_metric([channel], stats.get("peers_unanswering", 0))
        yield unanswering
        engine = sync.get_synchronizer_stats()
        for key in ("sends", "receives"):
            family = CounterMetricFamily(
                f"localsync_sync_{key}", f"Protocol messages: {key}.", labels=labels
            )
            family.add_metric([channel], engine.get(key, 0))
            yield family
        yield from persister_families("localsync_sync", "channel", {channel: sync.get_stats()})
        if self._persister is not None:
            yield from persister_families(
                "localsync_persister", "channel", {channel: self._persister.get_stats()}
            )


def _registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def metrics_route(server: WsServer, prefix: str = "/metrics") -> Route:
    """A route serving ``server``'s metrics (Prometheus text format) under ``prefix``.

    It needs the server's ``token`` when there is one (and passes its ``authenticate`` hook,
    asked with the route's name), like any ``auth=True`` route.
    """
    registry = _registry(ServerCollector(server))

    def answer(_request: Request) -> HttpReply:
        return HttpReply(200, generate_latest(registry), CONTENT_TYPE)

    return Route(prefix, http=answer, auth=True)


def health_route(server: WsServer, prefix: str = "/healthz") -> Route:
    """A route answering 200 ``{"status": "ok", "paths", "rooms", "clients"}`` (no auth).

    Once the server is shutting down its core refuses every route with 503 before this
    handler is asked, so a load balancer stops sending clients there.
    """

    def answer(_request: Request) -> HttpReply:
        stats = server.get_stats()
        body = {
            "status": "ok",
            "paths": stats["paths"],
            "rooms": stats["rooms"],
            "clients": stats["clients"],
        }
        return HttpReply(200, json.dumps(body).encode(), "application/json")

    return Route(prefix, http=answer, auth=False)


class MetricsHandle:
    """A running metrics endpoint of :func:`serve_metrics` (``url``, ``port``, ``close()``)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """The metrics URL (any path of this port serves them)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    synchronizer: ChannelSynchronizerLike,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    persister: PersisterLike | None = None,
) -> MetricsHandle:
    """Serve a channel synchronizer's metrics over HTTP on ``host:port`` (0: a free port).

    ``persister`` is the store's own persister (file, SQLite...), if it has one. The server
    runs on a daemon thread (``prometheus_client.start_http_server``) with a private registry;
    it has no authentication, so keep it on loopback or behind the scraper's network.
    """
    registry = _registry(ChannelCollector(synchronizer, persister))
    server, thread = start_http_server(port, host, registry)
    return MetricsHandle(server, thread, host)
