"""The local stack: a STAC API, an S3-compatible store, an MLflow server and a Ray head on 127.0.0.1."""

from infra.local.stack import ALL_SERVICES, LocalStack, RunningService, StackConfig, StackError

__all__ = ["ALL_SERVICES", "LocalStack", "RunningService", "StackConfig", "StackError"]
