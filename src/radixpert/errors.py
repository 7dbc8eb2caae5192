"""The error types of radixpert, in one place at the bottom of the package.

Every error that describes what the user gave (a file, a record, a name, an option, a missing
package or weight) is a ``RadixpertError``; its message names the file and the field, the id
or the option. ``radixpert`` prints such an error in one line and exits with status 2.
Anything else that escapes a command is a bug in radixpert: the command line says so in one
line naming the exception and where it was raised, and ``--verbose`` shows the traceback.

Each type also derives from the built-in exception it refines (``ValueError``, ``KeyError``,
...), so ``except ValueError`` keeps working for code that calls the library.
"""

from __future__ import annotations

__all__ = [
    "ConversationError",
    "ImageError",
    "InputError",
    "LLMError",
    "MetricUnavailable",
    "MissingDependency",
    "RadixpertError",
    "ReaderError",
    "RecipeError",
    "SplitError",
    "StudyError",
    "UnknownName",
    "UsageError",
]


class RadixpertError(Exception):
    """A problem with what the user gave; the message says what, where, and how to fix it."""


class UsageError(RadixpertError, ValueError):
    """A command-line value that cannot be used (a malformed ``key=value``, a missing flag)."""


class UnknownName(RadixpertError, KeyError):
    """A name that is not in its registry (dataset, metric, task, size, weights, stage)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class InputError(RadixpertError, ValueError):
    """A problem with an input file of reports; the message names the file and the record."""


class StudyError(RadixpertError, ValueError):
    """A malformed Study record; the message names the file, the record and the field."""


class ReaderError(RadixpertError, ValueError):
    """A dataset file that is missing or broken; the message names the file and the field."""


class SplitError(RadixpertError, ValueError):
    """Splits cannot be assigned or are inconsistent; the message names studies or patients."""


class ImageError(RadixpertError, ValueError):
    """An image could not be read; the message names the file and what failed."""


class ConversationError(RadixpertError, ValueError):
    """A malformed conversation record; names the file, line and field."""


class RecipeError(RadixpertError, ValueError):
    """A recipe that cannot be read, or a value in it (or in an override) that is invalid."""


class LLMError(RadixpertError, RuntimeError):
    """The opt-in LLM endpoint refused, failed, or answered in an unexpected shape.

    `status` is the HTTP status when the server answered with an error (None otherwise): a
    4xx other than 429 is the request's fault and asking again will not help.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MetricUnavailable(RadixpertError, RuntimeError):
    """The metric cannot run here: a package, a program or model weights are missing.

    The message says what is missing, where it was looked for and how to get it.
    """


class MissingDependency(RadixpertError, ImportError):
    """An optional package (or program) needed by the code at hand is not installed."""
