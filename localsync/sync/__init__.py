"""The sync layer: the sans-I/O engine, the Synchronizer and Persister lifecycles around it,
the local and custom synchronizers, and the blocking facade.

Transports (``localsync.channel``, ``localsync.ws``) and storage back ends
(``localsync.persisters``) build on this layer; it imports no socket or database library.
"""
