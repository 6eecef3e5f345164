"""The control plane's one boto3 facade."""

from .facade import READ_PREFIXES, Aws, boto3_factory, is_mutating

__all__ = ["READ_PREFIXES", "Aws", "boto3_factory", "is_mutating"]
