"""The exceptions a user can cause, each carrying its exit code
(docs/reference/formats.md#exit-codes).

Library code raises these; only the CLI turns them into one line on stderr and an exit code.
"""

import re


class SharpError(Exception):
    """Bad usage or bad input: the message names the value and what was expected. Exit 2.

    An error about arguments carries their Python names in `param` (one name, or several),
    and its message writes each as `{name}` (or `{name=value}`, a setting of it such as
    `{check_deterministic=False}`): `str(err)` says the Python names, and the CLI says the
    flags instead (`sharpcli.cli.names`), so that the library never speaks in flags and
    nothing rewrites prose. `param` is the first (the one at fault)."""

    exit_code = 2

    def __init__(self, message: str = "", *, param: str | tuple[str, ...] | None = None):
        self.template = message
        self.params = (param,) if isinstance(param, str) else tuple(param or ())
        self.param = self.params[0] if self.params else None
        super().__init__(self.naming(str))

    def naming(self, name) -> str:
        """The message with each argument `p` (or setting `p=value`) in it called `name(p)`
        (`name("p=value")`); str gives the Python names."""
        text = self.template
        for p in self.params:
            text = re.sub(r"\{(" + re.escape(p) + r"(?:=[^{}]*)?)\}", lambda m: name(m.group(1)),
                          text)
        return text


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
