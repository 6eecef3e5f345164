"""Blueprints: the resource model of a deployment, and its CloudFormation rendering."""

from .definition import CodeArtifact, available, expand, load_definition
from .model import Blueprint, Resource

__all__ = [
    "Blueprint",
    "CodeArtifact",
    "Resource",
    "available",
    "expand",
    "load_definition",
]
