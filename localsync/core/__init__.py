"""The data layer: clocks, hashes, the codec, and the Store and MergeableStore built on them.

Nothing here does I/O or imports from the layers above (``sync``, ``persisters``,
``channel``, ``ws``, ``cli``).
"""
