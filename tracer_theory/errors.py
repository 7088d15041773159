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


class DamagedArtifact(InputError):
    """A file the toolkit wrote to reuse (a result, checkpoint, pretrained model or cache) is
    truncated, corrupted or not one of its files. The message names it and the way out."""


class Diverged(ValueError):
    """Training went non-finite (NaN or Inf). The message names the step, the strategy and the
    values that set its scale (λ, learning rate); nothing is written for the run."""
