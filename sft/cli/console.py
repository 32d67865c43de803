"""What every verb shares: the console, and telling a user's mistake from a bug."""

from __future__ import annotations

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from sft.config.validate import describe
from sft.errors import SftError

__all__ = ["console", "describe", "error_message", "is_user_error", "quiet_progress_bars"]
console = Console(stderr=True)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, (SftError, HydraException, OmegaConfBaseException))


def error_message(err: BaseException) -> str:
    """One line for a failed job: the user-facing message, or the exception type and text."""
    return describe(err) if is_user_error(err) else f"{type(err).__name__}: {err}"


def quiet_progress_bars() -> None:
    """Library progress bars would interleave with ours (and flood sweep logs)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
