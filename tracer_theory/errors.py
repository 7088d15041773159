"""The errors a user can act on, beyond ``ValueError`` for a bad argument value."""

from __future__ import annotations


class InputError(ValueError):
    """A file, folder or data set given to the toolkit cannot be used as it is (missing,
    unreadable, malformed, or results written for other settings). The message names it."""


class ResumeMismatch(InputError):
    """A results folder holds runs made with another configuration or other data: resuming
    from it would mislabel them."""


class MemoryBudgetExceeded(ValueError):
    """A computation would need more memory than the stated budget. The message names the
    size asked for, the limit, and the argument (or command-line flag) that sets it."""
