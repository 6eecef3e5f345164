"""CloudWatch Logs and metrics for the local executor: moto's backends, called in-process.

The executor runs inside the local cloud's server, beside moto. Sending the functions' log lines
and EMF metrics to moto through boto3 cost a botocore request, an HTTP round trip and moto's
Flask dispatch per batch - a sixth of the server's CPU under load. The calls here reach the same
backends directly (the account moto gives the local cloud's credentials), so ``shardkit logs``,
boto3 and the AWS CLI read what was written, as from AWS.
"""

from __future__ import annotations

from typing import Any

__all__ = ["put_log_events", "put_metric_data"]


def _account() -> str:
    from moto.core import DEFAULT_ACCOUNT_ID

    return DEFAULT_ACCOUNT_ID


def put_log_events(region: str, group: str, stream: str, events: list[dict[str, Any]]) -> None:
    """Append ``events`` (timestamp, message; in time order) to the stream, made if need be."""
    from moto.logs.models import logs_backends

    backend = logs_backends[_account()][region]
    if group not in backend.groups:
        backend.create_log_group(group, {})
    if stream not in backend.groups[group].streams:
        backend.create_log_stream(group, stream)
    backend.put_log_events(group, stream, events)


def put_metric_data(region: str, namespace: str, data: list[dict[str, Any]]) -> None:
    """``PutMetricData``'s ``MetricData`` (MetricName, Unit, Dimensions, Values)."""
    from moto.cloudwatch.models import cloudwatch_backends

    cloudwatch_backends[_account()][region].put_metric_data(namespace, data)
