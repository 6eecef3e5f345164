"""Project configuration: ``shardkit.toml`` loaded into frozen pydantic models."""

from .loader import CONFIG_FILE, Project, load_config, load_project
from .models import GroupConfig, ProjectConfig, ShardConfig

__all__ = [
    "CONFIG_FILE",
    "GroupConfig",
    "Project",
    "ProjectConfig",
    "ShardConfig",
    "load_config",
    "load_project",
]
