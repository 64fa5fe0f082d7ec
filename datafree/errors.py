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


class DiskFullError(CheckpointError):
    """A write that failed because its file system is full (or over quota)."""


class RunStopped(Exception):
    """A run that stopped on purpose, with what it had saved intact; ``exit_status`` tells scripts why.

    ``agreed``: every process of a torchrun run raised it at the same point (only rank 0 prints it).
    """

    exit_status = 1

    def __init__(self, message, agreed=False):
        super().__init__(message)
        self.agreed = agreed


class NonFiniteError(RunStopped):
    """A NaN or inf loss (or pixel) was met, and the run stopped before it could reach a weight,
    the pool or a checkpoint. ``where`` says what was non-finite; ``context`` (set by the epoch
    loop) says when, and where the last good checkpoint is."""

    exit_status = 3

    def __init__(self, where, agreed=False, context=None):
        super().__init__(where, agreed)
        self.where, self.context = where, context

    def __str__(self):
        return f"{self.where}{self.context or ''}"


class Interrupted(RunStopped):
    """SIGINT or SIGTERM asked the run to stop; it saved what it had (exit status 128 + the signal)."""

    def __init__(self, message, signal_number, agreed=False):
        super().__init__(message, agreed)
        self.exit_status = 128 + signal_number
