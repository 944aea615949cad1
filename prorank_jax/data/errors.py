"""The one error type of the data package.

Every problem with an input file is reported as a DataError whose message
starts with the place it was found, ``{path}:{line}: `` (or ``{path}: `` when
no single line is at fault), so that an editor or a terminal can jump to it.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """A data file does not have the expected format.

    ``path`` and ``line`` (1-based, or None) are kept as attributes so callers
    can report or test them without parsing the message.
    """

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.reason = message
        location = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{location}: {message}")

    def __reduce__(self):
        # Exceptions are pickled when they cross process boundaries (grain
        # workers); the default reduce would call __init__ with the message only.
        return (type(self), (self.path, self.reason, self.line))
