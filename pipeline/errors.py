"""The pipeline's one error hierarchy and warning base.

Every message says what was expected, what was found and what to do.
"""

from __future__ import annotations

__all__ = ["ChipError", "ConfigError", "ManifestError", "PipelineError", "PipelineWarning", "StacError", "StoreError"]


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A job config (YAML file, `--set` override or value) is invalid; the message names the key path.

    Also a `ValueError`, so the value checks in the config dataclasses' `__post_init__` raise it and the
    validator reports them at the key where they happened. Jobs exit with status 2 on it.
    """


class StacError(PipelineError):
    """A STAC API could not be reached or answered with an error."""


class ManifestError(PipelineError):
    """A manifest could not be written, read or trusted."""


class ChipError(PipelineError):
    """A chip could not be read or co-registered from its items."""


class StoreError(PipelineError):
    """A shard, index or statistics file could not be written or read."""


class PipelineWarning(UserWarning):
    """Base of the pipeline's warnings."""
