"""Error types shared by every stage.

``UserError`` covers anything a user can fix (a wrong path, a mismatched artefact, a bad tile); the CLI prints
its message on one line and exits 2. ``OptionalDependencyError`` is the one error for a missing optional package.
"""

from __future__ import annotations


class MosaicEdgeError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(MosaicEdgeError):
    """Something the user can fix; printed as one line by the CLI (exit code 2)."""


class ContractMismatchError(UserError):
    """An artefact's contract does not match the data or the other artefact it is used with."""


class DataError(UserError):
    """A data file is missing, truncated or has the wrong shape, dtype or band count; the message names it."""


class OptionalDependencyError(UserError, ImportError):
    """An optional dependency is missing; the message names the package and how to install it."""
