"""Hashing, slot tables, residency, map codec and diff: the core of shardkit.

The data-plane modules (``hashing``, ``shardmap``, ``codec``) import only the stdlib, msgpack,
xxhash and jump; ``planner``, ``build`` and ``diff`` are the control plane's.
"""
