"""The WebSocket transport: TinyBase's wire format, the client synchronizer, and the server
(legacy framing and the multiplexed ``tinybase`` subprotocol)."""
