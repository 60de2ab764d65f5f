"""A training run's directory: what it holds, and the rules that keep it safe.

    RUN/run.json             what the run is: kind, data, model/diffusion/training configs, command
    RUN/metrics.jsonl        one JSON object per logging interval (appended; cut back on resume)
    RUN/checkpoints/step-NNNNNNNN.pt   self-describing checkpoints with the full training state
    RUN/previews/step-NNNNNNNN.png     sample grids from the EMA weights

Checkpoints are written to a temporary name and renamed, so a kill never leaves a half-written
one; only the newest `keep` are kept. A new run refuses a non-empty directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "RunDirError", "write_json_atomic"]

_CKPT = re.compile(r"^step-(\d{8,})\.pt$")


class RunDirError(ValueError):
    """A run directory that cannot be created or resumed (one-line message)."""


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

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

    def create(self, description: dict[str, Any]) -> None:
        """Start a new run; refuses a directory that already holds anything."""
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"--out {self.root} exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()):
            hint = " (pass --resume to continue it)" if self.run_json.exists() else ""
            raise RunDirError(f"--out {self.root} is not empty{hint}; choose a new run directory")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.previews.mkdir(exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create run directory {self.root}: {e.strerror}") from None
        write_json_atomic(self.run_json, description)

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
        """Delete all but the newest `keep` checkpoints."""
        for step in self.checkpoint_steps()[:-keep] if keep > 0 else []:
            self.checkpoint_path(step).unlink(missing_ok=True)

    # ------------------------------------------------------------------ metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be logged again)."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        tmp = self.metrics.with_name(f".{self.metrics.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics)
