"""The control-plane bootstrap of a shardkit project, as code.

Creates, in every region the project uses, the foundation that deploys build on and that a
narrower deploy role then needs no rights to create:

* the artifact bucket - code packages (``artifacts/``) and the map registry (``registry/map.skm``,
  versioned): encrypted, private, versioned;
* the state table - per-key state and the shards' epoch records: on-demand, encrypted,
  point-in-time recovery.

Both come from the project's blueprint (``shardkit/blueprints/<name>.toml``, ``[[region]]``), so
the bootstrap and ``shardkit deploy`` can never disagree about them; this script applies only
those resources, with the same plan/apply engine, journal and deployment record.

    python infra/bootstrap.py PROJECT_DIR [--local | --aws] [--yes] [--json]

is ``shardkit bootstrap``; run either once per project and target, before the first deploy
(``shardkit deploy`` creates the foundation itself when it is missing).
"""

from __future__ import annotations

import sys

from shardkit.cli.main import main

if __name__ == "__main__":
    main(["bootstrap", *sys.argv[1:]])
