"""The exceptions prune-gym raises for what its user can fix (as Gymnasium's ``error.py``).

Every one says what was wrong and how to fix it (which argument, which path, which command).
They subclass the built-in exception a caller would expect (``ValueError`` for a bad argument,
``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working; the
``prune-gym`` command turns exactly these (and the machine's faults, such as a full disk) into
one-line messages, and lets anything else, a bug, keep its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "Error", "MissingResourceError"]


class Error(Exception):
    """Base of prune-gym's own errors."""


class ConfigError(Error, ValueError):
    """A bad argument, setting, input or file content; the message names it and the fix."""


class MissingResourceError(Error, FileNotFoundError):
    """A dataset, weights, agent, recipe or run file that is not where it was looked for."""
