"""The exceptions a user can cause, each carrying its exit code
(docs/reference/formats.md#exit-codes).

Library code raises these; only the CLI turns them into one line on stderr and an exit code.
"""


class SharpError(Exception):
    """Bad usage or bad input: the message names the value and what was expected. Exit 2."""

    exit_code = 2


class DivergedError(SharpError):
    """Training produced NaN or inf. Exit 1."""

    exit_code = 1


class StrictCheckFailed(SharpError):
    """A `--strict` check did not pass. Exit 1."""

    exit_code = 1


class SharpWarning(UserWarning):
    """Something the caller should know that does not stop the work: a measurement that
    did not reach its tolerance, a slower path taken, and why."""


class Interrupted(SharpError):
    """SIGINT or SIGTERM arrived; what was done is saved. Exit 130."""

    exit_code = 130
