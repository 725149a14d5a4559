"""User-facing errors: each one is reported as a single line and exit code 2 by the CLI."""


class DistillError(Exception):
    """Bad input from the user (config, data, model, resources). Never a bug in this library."""


class ConfigError(DistillError):
    pass


class DataError(DistillError):
    pass


class ModelError(DistillError):
    pass


class ResourceError(DistillError):
    pass


class NodeLost(ResourceError):
    """A model's Ray actor or node was lost more often than ``ray.max_restarts`` allows
    (:mod:`ensemble.cluster.restarts`)."""


class CheckpointError(DistillError):
    pass


class TrainingDiverged(DistillError):
    pass


class FolderInUse(DistillError):
    """Another live process holds the folder's lock (:mod:`ensemble.base.lock`)."""


class StorageError(DistillError):
    """A write to the output folder failed (a full disk, a quota, a read-only file system)."""
