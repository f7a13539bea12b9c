"""The error tree.

`SmartRetentionError` is the root. Its `UserError` branch holds the expected failures
(a missing file, a bad column mapping): the command line prints their one-line message
and exits with their `exit_code`, without a traceback. Anything else is a bug.
"""


class SmartRetentionError(Exception):
    """Root of every error this package raises on purpose."""


class UserError(SmartRetentionError):
    """An expected failure caused by input or configuration; shown as one line."""

    exit_code = 2


class InputFileError(UserError):
    """The recorded file cannot be read: missing, unreadable, or a required column absent."""


class InvalidOption(UserError):
    """A command-line option has a value the command cannot use."""


class ReplayTargetNotEmpty(UserError):
    """The target database already holds rows for a channel that the replay would write."""


class StrictModeRejection(UserError):
    """`--strict` was given and an observation was rejected."""

    exit_code = 1
