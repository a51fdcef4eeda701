"""Errors that reach the user as one line and exit code 2 (see recforge.cli)."""

from __future__ import annotations


class RecforgeError(Exception):
    """A problem with the user's input: a file, a column map, a parameter.

    The CLI prints ``str(error)`` on one line and exits with code 2; ``--debug``
    shows the traceback.
    """


class ValidationFailed(RecforgeError):
    """The data gate found failed expectations; the report names them."""

    def __init__(self, message: str, report_path: str | None = None) -> None:
        super().__init__(message)
        self.report_path = report_path


class MissingExtra(RecforgeError):
    """A plugin needs an optional dependency that is not installed."""
