"""Blueprints: the resource model of a deployment, and its CloudFormation rendering."""

from .definition import CodeArtifact, available, expand, load_definition
from .model import KINDS, Blueprint, Resource

__all__ = [
    "KINDS",
    "Blueprint",
    "CodeArtifact",
    "Resource",
    "available",
    "expand",
    "load_definition",
]
