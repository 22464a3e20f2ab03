"""Errors that are the user's to fix (bad recipe, missing file, unknown name).

The CLI prints a :class:`UserError` as one line and exits with status 2; any other
exception is a runtime failure (status 1).
"""


class UserError(Exception):
    """An error in what the user asked for, reported without a traceback."""


class RegistryError(UserError, KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
