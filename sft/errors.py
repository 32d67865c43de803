"""User-facing errors: each one is printed as a single line and exits with status 2 (or its
`exit_code`)."""


class SftError(Exception):
    """A problem the user can fix (bad config, missing file, bad data); no traceback shown."""


class ConfigError(SftError):
    """The composed configuration is invalid."""


class DataError(SftError):
    """A data file, split, column or label is missing or wrong."""


class ModelError(SftError):
    """A model or tokenizer cannot be loaded."""


class TrainingError(SftError):
    """Training diverged (non-finite loss) or otherwise cannot go on with these settings."""


class WorkerFailed(SftError):
    """A process of a several-process run died or crashed; the launcher stopped the others."""

    exit_code = 1
