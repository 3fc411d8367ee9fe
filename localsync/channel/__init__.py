"""The channel transport: ZeroMQ PUB/SUB between processes (the BroadcastChannel role), its
hub, presence, runtime folder, and the coordinator that persists a channel."""
