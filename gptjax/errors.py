"""Every error gptjax reports to a user. Each message names the file, line or key at fault; the
command line prints it as one line (catching GptjaxError) instead of a traceback."""

import os
import re


class GptjaxError(Exception):
    """The base of every error gptjax raises on purpose."""


class ConfigError(GptjaxError, ValueError):
    """A config key, value or file that cannot be used; the message names it."""


class DataError(GptjaxError, ValueError):
    """Bad input data; the message names the file (or dataset split) and the line (or row)."""


class CheckpointError(GptjaxError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the problem."""


class SetupError(GptjaxError, RuntimeError):
    """The run cannot start: a source cannot be reached or read. The message says what to do."""


class WorkdirError(GptjaxError, RuntimeError):
    """A workdir, an input or an output path cannot be used as asked; the message says why."""


class NonFiniteError(GptjaxError, RuntimeError):
    """The loss or the gradients stopped being finite; nothing from that step on is saved."""


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


class CheckpointSaveError(GptjaxError, RuntimeError):
    """A checkpoint could not be written; the run stops (the checkpoints before it still resume)."""

    def __init__(self, step: int, directory, error: Exception):
        text = str(error)
        # A background write's failure surfaces at the next save: its own step is in its path.
        failed = re.search(r"[/\\](\d+)\.orbax-checkpoint-tmp", text)
        step = int(failed.group(1)) if failed else step
        code = re.search(r"os_error_code='(\d+)'", text)
        reason = (getattr(error, "strerror", None) or (os.strerror(int(code.group(1))) if code else None)
                  or first_line(error) or type(error).__name__)
        super().__init__(f"checkpoint {step} could not be written to {directory} ({reason}); "
                         "the run stopped. Free space or fix the permissions, then run the same command to resume "
                         "from the last checkpoint written")
