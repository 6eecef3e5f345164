"""The quickstart's inference code: shipped in every shard's code package as ``app``."""
