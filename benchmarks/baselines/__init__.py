"""Subjects measured side by side by ``python -m benchmarks`` (see :mod:`benchmarks.suite`).

Baselines: raw pyzmq+msgspec PUB/SUB through an XSUB/XPUB proxy (:mod:`.zmq_subjects`, the
transport's own limit), ``multiprocessing.Manager().dict()`` (:mod:`.manager_dict`), pycrdt
documents over the same ZeroMQ sockets (:mod:`.zmq_subjects`), TinyBase 10.0.1 in Node
(:mod:`.tinybase`: BroadcastChannelSynchronizer across worker threads, heap per cell) and a
plain dict (:mod:`.memory`). The subject itself, localsync, runs the identical workload in
:mod:`.localsync_subject`. The shared workload is defined once in :mod:`.common`.
"""
