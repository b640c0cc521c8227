"""The exceptions zooscope raises for problems a user can fix.

Each carries a one-line message and an optional hint; the CLI turns them into an
``error:`` line and exit code 1. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class ZooscopeError(Exception):
    """A problem with the user's input, files or environment."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if hint:  # a traceback (a notebook's) shows it under the message; the CLI prints it
            self.add_note(f"hint: {hint}")

    def __str__(self) -> str:
        return self.message


class ConfigError(ZooscopeError):
    """A zoo config that cannot be used."""


class ZooFileError(ZooscopeError):
    """A zoo file that is missing, damaged, foreign or unsafe."""


class MissingFile(ZooFileError):
    """No file at the path or URL asked for (a server's 404, a missing object)."""


class UnfinishedWrite(ZooFileError):
    """A zoo its killed writer left in a state that only resuming it opens (the store
    clears what the writer left when it reopens the zoo for writing)."""


class NetworkError(ZooscopeError):
    """A zoo at a URL that could not be read: no answer in time, a refused or broken
    connection, or an answer that is not what was asked for."""


class DataError(ZooscopeError):
    """A data source that is missing or does not have the expected shape."""


class PluginError(ZooscopeError):
    """A plugin that is unknown, clashes with another or failed."""


class PluginWarning(UserWarning):
    """Something about plugins a user should know that does not stop the command."""
