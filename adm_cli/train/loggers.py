"""Metric loggers besides metrics.jsonl: TensorBoard and Weights & Biases (`--log-to`).

Each metrics.jsonl record goes out as scalars under the same keys at the same step, each preview
grid as an image, and run.json's content once when the loggers open. Only the main process
(rank 0) builds a `Loggers`, so only it imports tensorboard or wandb (optional extras:
`pip install adm[tensorboard]`, `adm[wandb]`).

    RUN/tensorboard/         TensorBoard event files (torch.utils.tensorboard.SummaryWriter)
    RUN/wandb/               W&B's local files (wandb.init(dir=RUN))
    RUN/wandb/adm-run-id     the W&B run id, so a --resume continues the same W&B run

A resume logs again the steps after its checkpoint: TensorBoard hides the stale events past the
checkpoint's step (purge_step); W&B keeps its first value of a step it already has (the values
are the same, exact resumption, but for timing). A logger that fails mid-run (a full disk, a
lost connection) is said once on stderr and dropped; training goes on.
"""

from __future__ import annotations

import json
import secrets
import string
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from adm_cli.files import write_bytes_atomic
from adm_cli.reporting import Reporter

__all__ = ["LOGGERS", "Loggers", "check_names", "unavailable"]

# --log-to name -> (the module it needs, the extra that installs it)
LOGGERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
DEFAULT_WANDB_PROJECT = "adm"


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names in order without repeats; ValueError for one that is not a logger."""
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"--log-to: unknown logger {name!r} (choose from {', '.join(LOGGERS)}, or none)")
    return tuple(dict.fromkeys(names))


def unavailable(names: Sequence[str]) -> str | None:
    """Why the loggers cannot run here (a package not installed), None when they can. Checks
    importability without importing, so a run is refused before its directory is created."""
    for name in names:
        module, extra = LOGGERS[name]
        if find_spec(module) is None:
            return f"--log-to {name} needs the {module} package: pip install 'adm[{extra}]'"
    return None


class _Logger(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None: ...

    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, root: Path, *, config: dict[str, Any], step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: hide events a killed run logged past the checkpoint this run resumes from.
        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"), purge_step=step + 1)
        self.writer.add_text("run.json", "```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", step)
        self.writer.flush()

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a SIGKILL loses nothing that metrics.jsonl has

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")  # (H, W, C) uint8
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, root: Path, *, config: dict[str, Any], project: str | None, quiet: bool):
        import wandb

        id_file = root / "wandb" / "adm-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            id_file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(id_file, (run_id + "\n").encode())
        self.run = wandb.init(
            project=project or DEFAULT_WANDB_PROJECT, id=run_id, resume="allow", dir=str(root), name=root.name,
            settings=wandb.Settings(console="off", quiet=quiet),  # console off: stdout and stderr stay ours
        )
        self.run.config.update(config, allow_val_change=True)  # a resume may have changed run options
        self._image = wandb.Image

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.run.log({tag: self._image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The chosen loggers behind one interface; the training loop calls `open` once (at the step
    it starts from), then `log_scalars` / `log_image`, and `close`. A logger that raises is
    reported once and dropped."""

    def __init__(self, names: Sequence[str], root: str | Path, *, config: dict[str, Any], reporter: Reporter,
                 wandb_project: str | None = None):
        self.names = check_names(names)
        self.root = Path(root)
        self.config = config
        self.reporter = reporter
        self.wandb_project = wandb_project
        self._open: dict[str, _Logger] = {}

    def open(self, step: int) -> None:
        for name in self.names:
            try:
                if name == "tensorboard":
                    self._open[name] = _TensorBoard(self.root, config=self.config, step=step)
                else:
                    self._open[name] = _WandB(self.root, config=self.config, project=self.wandb_project,
                                              quiet=self.reporter.quiet)
            except Exception as e:  # noqa: BLE001 - logging is never worth stopping training for
                self._drop(name, "could not start", e)

    def log_scalars(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record: every number but "step", at its step."""
        values = {k: float(v) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._each(lambda logger: logger.log_scalars(values, int(record["step"])))

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._each(lambda logger: logger.log_image(tag, image, step))

    def close(self) -> None:
        for name in list(self._open):
            try:
                self._open.pop(name).close()
            except Exception as e:  # noqa: BLE001
                self._drop(name, "could not close", e)

    def _each(self, call) -> None:
        for name in list(self._open):
            try:
                call(self._open[name])
            except Exception as e:  # noqa: BLE001
                self._drop(name, "failed", e)

    def _drop(self, name: str, what: str, error: Exception) -> None:
        logger = self._open.pop(name, None)
        reason = str(error).splitlines()[0] if str(error) else ""
        self.reporter.warn(f"{name} logging {what} ({type(error).__name__}: {reason}); training goes on without it")
        if logger is not None:
            try:
                logger.close()
            except Exception:  # noqa: BLE001 - already reported
                pass
