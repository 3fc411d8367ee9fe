"""The channel: synchronizers between processes (the BroadcastChannel role) over ZeroMQ PUB/SUB
(a local hub, or a tcp:// hub) or over NATS (nats://, one server or a cluster), the shared
endpoint of both transports, the ZeroMQ hub, presence, runtime folder, and the coordinator
that persists a channel."""
