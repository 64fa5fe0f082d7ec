"""User-facing errors: each carries one sentence that says what is wrong and what to do.

The entry scripts print these without a traceback; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input from the user: a name, a path, a flag combination."""


class UnknownNameError(UsageError, KeyError):
    """A model, dataset or method name that is not registered."""

    def __str__(self):
        return self.args[0]


class DatasetNotFoundError(UsageError, FileNotFoundError):
    """A registered dataset whose files are not on disk."""


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""
