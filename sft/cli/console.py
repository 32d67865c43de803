"""What every verb shares: the console, and telling a user's mistake from a bug."""

from __future__ import annotations

import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from sft.config.compose import explain as describe  # nearest names for typos
from sft.errors import SftError

__all__ = ["console", "describe", "error_message", "is_user_error", "quiet_progress_bars",
           "shell_completion"]
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


# `eval "$(sft -sc install=bash)"`: each TAB asks `sft -sc query=bash` for the words that fit
# (Hydra's own `sft train -sc install=bash` script would call `sft -sc ...` without the verb)
# (the word being completed is read from COMP_LINE, not COMP_WORDS: zsh counts from 1)
BASH_COMPLETION = r"""_sft_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}"
    local choices=$(COMP_LINE="$line" sft -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "${line##* }"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _sft_complete sft"""
COMPLETED_BY_HYDRA = ("train", "cv")  # the verbs that take overrides first


def shell_completion(args: list[str], commands: tuple[str, ...]) -> int:
    """`sft -sc install=bash` prints the script; `sft -sc query=bash` answers it: the verbs,
    then for train/cv Hydra's own completion of groups, options and keys (COMP_LINE without
    the verb); for other verbs nothing, so the shell completes file names."""
    if args == ["install=bash"]:
        print(BASH_COMPLETION)
        return 0
    if args != ["query=bash"]:
        print("error: shell completion: use `sft -sc install=bash` (bash; zsh through "
              "bashcompinit)", file=sys.stderr)
        return 2
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typed = words[1:] if line.endswith(" ") else words[1:-1]  # the words before the cursor's
    if not typed:
        print(" ".join(commands))
    elif typed[0] in COMPLETED_BY_HYDRA:
        import hydra

        from sft.config.compose import CONFIG_DIR, PRIMARY
        from sft.config.resolvers import register

        register()
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + line[len(line.rstrip()):]
        sys.argv = ["sft", "-sc", "query=bash"]  # Hydra answers and exits before any job
        hydra.main(config_path=str(CONFIG_DIR), config_name=PRIMARY, version_base="1.3")(
            lambda cfg: None)()
    return 0
