"""User-facing errors: one line on stderr, exit code 2 (no traceback)."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from adm_cli.backend import BackendError
from adm_cli.checkpoint import CheckpointError
from adm_cli.config import ConfigError
from adm_cli.data.samples import SampleFileError
from adm_cli.data.datasets import DataError
from adm_cli.generate import GenerateError
from adm_cli.evaluate import EvaluateError, InceptionWeightsError
from adm_cli.train import RunDirError, TrainError
from adm_cli.train.plot import PlotError


class UserError(ValueError):
    """Bad input or options, reported as one line."""


USER_ERRORS = (
    UserError, BackendError, CheckpointError, ConfigError, SampleFileError, GenerateError, DataError, RunDirError, TrainError,
    EvaluateError, InceptionWeightsError, PlotError,
)
F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn the library's input errors into `error: ...` + exit 2, and I/O errors too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError, FileExistsError) as e:
            fail(f"{e.filename or ''}: {e.strerror}".lstrip(": "))
        except OSError as e:
            if is_disk_full(e):
                fail(disk_full_message(e, kwargs.get("out")))
            raise
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; re-run the same command to continue\n")
            raise typer.Exit(130)

    return wrapper  # type: ignore[return-value]


def is_disk_full(e: OSError) -> bool:
    """ENOSPC / EDQUOT, also when a library (h5py, zipfile) kept only the text."""
    import errno

    return e.errno in (errno.ENOSPC, errno.EDQUOT) or any(
        text in str(e).lower() for text in ("no space left on device", "disk quota exceeded")
    )


def disk_full_message(e: OSError, out=None) -> str:
    """One line naming what could not be written: the error's file, else the command's output."""
    import errno

    what = "disk quota exceeded" if e.errno == errno.EDQUOT or "quota" in str(e).lower() else "no space left on device"
    target = e.filename or out
    where = f" writing {target}" if target else ""
    return f"{what}{where}; free some space and run the same command again"


def check_writable(path) -> None:
    """Fail before any work when an output cannot be created (parent not a folder, read-only)."""
    import os
    from pathlib import Path

    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable")
