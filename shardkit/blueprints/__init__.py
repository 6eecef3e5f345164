"""Blueprint definitions shipped with shardkit (installed as ``shardkit.blueprints``).

Each ``<name>.toml`` here is one blueprint; see docs/blueprints.md for the format.
"""
