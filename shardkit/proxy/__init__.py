"""The stateful inference proxy: the Lambda handler deployed to every shard.

Plug in inference code as ``module:function`` (``[proxy] handler`` in shardkit.toml, default
``app.model:infer``), called as ``fn(key, payload, state) -> (answer, new_state)``.
See :mod:`shardkit.proxy.handler`.
"""
