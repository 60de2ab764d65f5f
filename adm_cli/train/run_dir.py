"""A training run's directory: what it holds, and the rules that keep it safe.

    RUN/run.json             what the run is: kind, data, model/diffusion/training configs, command
    RUN/metrics.jsonl        one JSON object per logging interval (appended; cut back on resume)
    RUN/checkpoints/step-NNNNNNNN.pt   self-describing checkpoints with the full training state
    RUN/previews/step-NNNNNNNN.png     sample grids from the EMA weights
    RUN/tensorboard/, RUN/wandb/       with --log-to (adm_cli/train/loggers.py)

    RUN/.lock                held (flock) by the process training the run; a second one is refused
    RUN/checkpoints/step-NNNNNNNN.pt.corrupt   a checkpoint a resume found unreadable, set aside

Checkpoints are written to a temporary name and renamed, so a kill never leaves a half-written
one; only the newest `keep` are kept, and an older one is deleted only after the new one is on
disk. A new run refuses a non-empty directory. A write that fails (a full disk) is one
RunDirError line naming the file, and leaves the file as it was.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from adm_cli.files import FileLock, LockBusy, write_bytes_atomic, write_reason

__all__ = ["RunDir", "RunDirError", "write_json_atomic"]

_CKPT = re.compile(r"^step-(\d{8,})\.pt$")
LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be created or resumed (one-line message)."""


def write_json_atomic(path: Path, data: Any) -> None:
    try:
        write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise RunDirError(f"cannot write {path}: {write_reason(e)}") from None


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock: FileLock | None = None

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    def preview_path(self, step: int) -> Path:
        return self.previews / f"step-{step:08d}.png"

    # ------------------------------------------------------------------ lifecycle

    def _holds_anything(self) -> bool:
        return self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir())

    def _refuse_if_not_empty(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"--out {self.root} exists and is not a directory")
        if self._holds_anything():
            hint = " (pass --resume to continue it)" if self.run_json.exists() else ""
            raise RunDirError(f"--out {self.root} is not empty{hint}; choose a new run directory")

    def lock(self) -> None:
        """Hold the run for this process (until it exits or `unlock`); another live process
        holding it is a RunDirError. The kernel drops the lock when the process dies."""
        if self._lock is not None:
            return
        lock = FileLock(self.root / LOCK_NAME)
        try:
            lock.acquire()
        except LockBusy:
            raise RunDirError(f"{self.root} is in use by another running process") from None
        except OSError as e:
            raise RunDirError(f"cannot lock {self.root}: {write_reason(e)}") from None
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def create(self, description: dict[str, Any]) -> None:
        """Start a new run and lock it; refuses a directory that already holds anything (but a
        lock file left by an earlier attempt)."""
        self._refuse_if_not_empty()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create run directory {self.root}: {write_reason(e)}") from None
        self.lock()
        try:
            self._refuse_if_not_empty()  # another process may have started a run here meanwhile
            try:
                self.checkpoints.mkdir(exist_ok=True)
                self.previews.mkdir(exist_ok=True)
            except OSError as e:
                raise RunDirError(f"cannot create run directory {self.root}: {write_reason(e)}") from None
            write_json_atomic(self.run_json, description)
        except BaseException:
            self.unlock()
            raise

    def read_description(self) -> dict[str, Any]:
        if not self.run_json.is_file():
            raise RunDirError(f"{self.root} is not a training run (no run.json); start it without --resume")
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.run_json}: unreadable ({e})") from None

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _CKPT.match(p.name)))

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint_path(steps[-1]) if steps else None

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints (called after a new one is on disk)."""
        for step in self.checkpoint_steps()[:-keep] if keep > 0 else []:
            self.checkpoint_path(step).unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Rename an unreadable checkpoint out of the way (never deleted: it is the user's file)
        so that it is neither resumed from, pruned, sampled as the newest, nor overwritten."""
        target = path.with_name(path.name + ".corrupt")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.corrupt{n}")
        try:
            os.replace(path, target)
        except OSError as e:
            raise RunDirError(f"cannot rename {path} aside: {write_reason(e)}") from None
        return target

    # ------------------------------------------------------------------ metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line; a failed write (full disk) is cut back off, so no half line stays."""
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            with open(self.metrics, "ab", buffering=0) as f:  # unbuffered: nothing left to flush on close
                size = f.seek(0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[f.write(view) :]
                except OSError:
                    try:
                        f.truncate(size)
                    except OSError:
                        pass
                    raise
        except OSError as e:
            raise RunDirError(f"cannot write {self.metrics}: {write_reason(e)}") from None

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be logged again)."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut by a kill
        tmp = self.metrics.with_name(f".{self.metrics.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.metrics)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RunDirError(f"cannot write {self.metrics}: {write_reason(e)}") from None
