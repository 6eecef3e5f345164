"""Hashing, slot tables, residency, map codec and diff: the core of shardkit.

Data plane: ``hashing``, ``shardmap``, ``codec`` and ``holder`` import only the stdlib, msgpack,
xxhash and jump (cryptography at the first verification); ``planner`` and ``diff`` are pure
functions of maps. Building a map from a project's configuration is the control plane's job
(:mod:`shardkit.config.build`): nothing here imports the configuration.
"""
