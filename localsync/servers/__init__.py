"""Import paths of localsync 0.1, kept so that code written against them keeps working.

New code imports from ``localsync`` (every public name is there) or from the layer packages:
``localsync.sync``, ``localsync.channel``, ``localsync.ws``.
"""
