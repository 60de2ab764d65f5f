"""The training loop shared by diffusion and classifier training.

Determinism, and so exact resumption: everything random in step n comes from generators seeded
by (seed, n) — the data order (`batch_indices`), flips, t, noise, label dropout, and dropout
inside the network (a forked RNG seeded per step, process and microbatch). A run resumed from
the checkpoint of step n therefore continues exactly as if it had never stopped, and nothing
but the checkpoint (model, EMA, optimizer, loss scale, timestep-sampler history) is needed.

Distributed (torchrun): each of W processes takes its slice of the global batch; gradients are
averaged by DDP; t and noise are drawn for the global batch on every process, so W processes
compute the same update as one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from adm_cli.backend import Backend, Dist, seeded_global_rng
from adm_cli.checkpoint import CheckpointError, make_payload, read_checkpoint, save_checkpoint
from adm_cli.config import ClassifierConfig, DiffusionConfig, TrainConfig, UNetConfig
from adm_cli.data.batches import BatchLoader, to_model_input
from adm_cli.data.datasets import ImageData
from adm_cli.data.images import make_grid, save_grid
from adm_cli.nn.layers import set_grad_checkpointing
from adm_cli.reporting import Reporter
from adm_cli.train.metrics import Meter
from adm_cli.train.optim import LossScaler, ema_rate_at, grad_norm, learning_rate, make_optimizer, update_ema
from adm_cli.files import write_reason
from adm_cli.train.loggers import check_names
from adm_cli.train.run_dir import RunDir, RunDirError

if TYPE_CHECKING:
    from adm_cli.train.loggers import Loggers

__all__ = ["RunOptions", "Task", "TrainError", "mix_seed", "train"]


class TrainError(ValueError):
    """A training request that cannot run (one-line message)."""


@dataclass(frozen=True)
class RunOptions:
    """How this invocation runs (not part of the run's identity; may change on resume)."""

    steps: int | None = None
    minutes: float | None = None
    save_every: int = 1000
    save_minutes: float = 15.0
    log_every: int = 50
    preview_every: int | None = None
    eval_every: int | None = None
    keep: int = 3
    grad_checkpoint: bool = False  # recompute block activations in backward (less memory, same gradients)
    log_to: tuple[str, ...] = ()  # loggers besides metrics.jsonl: "tensorboard", "wandb"
    wandb_project: str | None = None  # None: "adm"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "log_to", check_names(self.log_to))  # run.json stores a list
        except ValueError as e:
            raise TrainError(str(e)) from None
        if self.steps is not None and self.steps <= 0:
            raise TrainError(f"--steps must be positive, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise TrainError(f"--minutes must be positive, got {self.minutes}")
        for name in ("save_every", "log_every", "preview_every", "eval_every", "keep"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainError(f"--{name.replace('_', '-')} must be positive, got {value}")


class Task(Protocol):
    """What differs between the diffusion model and the classifier."""

    kind: str
    model: nn.Module
    config: UNetConfig | ClassifierConfig
    diffusion: DiffusionConfig | None

    def inputs(self, x0: Tensor, labels: Tensor | None, *, generator: torch.Generator, global_batch: int, part: slice) -> dict[str, Tensor]:
        """Per-image inputs of this process's slice; must hold "weight" (B,) and may hold "t"."""
        ...

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-image loss terms (B,) of one microbatch; "loss" is the one optimised."""
        ...

    observes_losses: bool
    """Whether `observe` needs the global batch's losses (gathered across processes each step)."""

    def observe(self, t: Tensor, losses: Tensor) -> None:
        """Losses of the whole global batch, for loss-aware timestep sampling."""
        ...

    @property
    def num_timesteps(self) -> int | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def preview(self, model: nn.Module, step: int) -> tuple[np.ndarray, int] | None:
        """(uint8 images (N, H, W, C), images per row) sampled from `model` (EMA weights), or None."""
        ...

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        """Held-out metrics (classifier validation), {} when there is nothing to evaluate."""
        ...


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (numpy SeedSequence hashing; no collisions in practice)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# Stream identifiers for mix_seed(seed, step, STREAM, ...); INIT_STREAM seeds weight initialisation.
_NOISE, _FLIP, _DROPOUT = 1, 2, 3
INIT_STREAM = 0


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save and stop; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _agree(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every process if it is true on any (so all stop at the same step)."""
    if dist.world_size == 1:
        return flag
    import torch.distributed as tdist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _gather(local: Tensor, dist: Dist, part: slice, global_batch: int) -> Tensor:
    """The global batch's values from each process's slice (all_reduce of zero-padded slices)."""
    if dist.world_size == 1:
        return local
    import torch.distributed as tdist

    full = torch.zeros(global_batch, dtype=local.dtype, device=local.device)
    full[part] = local
    tdist.all_reduce(full)
    return full


def _ema_state(model: nn.Module, ema: list[Tensor]) -> dict[str, Tensor]:
    names = [n for n, _ in model.named_parameters()]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state.update({n: e.detach().cpu().clone() for n, e in zip(names, ema)})
    return state


class _Run:
    """One invocation's training state (model, optimiser, EMA weights, counters) with one method
    per phase: `restore` from the newest checkpoint, `start`, `train_step`, `log`, `save`, `preview`."""

    def __init__(self, task: Task, *, config: TrainConfig, options: RunOptions, run: RunDir, backend: Backend,
                 dist: Dist, reporter: Reporter, loggers: Loggers | None):
        self.task, self.config, self.options, self.run = task, config, options, run
        self.backend, self.dist, self.reporter, self.loggers = backend, dist, reporter, loggers
        self.device = backend.device
        self.global_batch = config.batch_size
        if self.global_batch % dist.world_size:
            raise TrainError(f"--batch-size {self.global_batch} is not divisible by the {dist.world_size} processes")
        self.local_batch = self.global_batch // dist.world_size
        self.micro = min(config.microbatch or self.local_batch, self.local_batch)
        self.part = slice(dist.rank * self.local_batch, (dist.rank + 1) * self.local_batch)

        model = task.model.to(self.device).train()
        set_grad_checkpointing(model, options.grad_checkpoint)
        if backend.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.net: nn.Module = model  # wrapped by DDP / torch.compile in `start`
        self.params = list(model.parameters())
        self.optimizer = make_optimizer(model, config)
        self.scaler = LossScaler(config.precision == "fp16")
        self.emas = {rate: [p.detach().clone() for p in self.params] for rate in config.ema_rates}
        self.step, self.elapsed_before = 0, 0.0
        self.skipped = 0
        self.preview_model: nn.Module | None = None

    def restore(self) -> None:
        """Load the newest usable checkpoint (setting aside newer unreadable ones) and cut
        metrics.jsonl back to its step; a run without checkpoints starts at step 0."""
        run, dist, reporter = self.run, self.dist, self.reporter
        state, path, bad = _newest_usable_checkpoint(run, self.model, self.config)
        if path is not None:
            self.model.load_state_dict(state["model"])
            names = [n for n, _ in self.model.named_parameters()]
            for rate in self.config.ema_rates:
                stored = state["ema"][str(rate)]
                self.emas[rate] = [stored[n].to(self.device) for n in names]
            ts = state["train_state"]
            self.optimizer.load_state_dict(ts["optimizer"])
            self.scaler.load_state_dict(ts["scaler"])
            self.task.load_state_dict(ts["task"])
            self.step, self.elapsed_before = int(state["step"]), float(ts.get("elapsed", 0.0))
            del state
        if dist.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()  # every process has read its checkpoint before one is set aside
        for skipped_path, reason in bad:
            if dist.is_main:
                aside = run.set_aside(skipped_path)
                reporter.warn(f"skipped {skipped_path.name}: {reason}; renamed it to {aside.name}, resuming from {path.name}")
        if path is not None:
            reporter.info(f"resuming {run.root} from step {self.step} ({path.name})")
        else:
            reporter.info(f"resuming {run.root}: no checkpoint yet, starting at step 0")
        if dist.is_main:
            run.truncate_metrics(self.step)

    def start(self) -> None:
        """Wrap the model for DDP and torch.compile (after any restore) and start the clocks."""
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = self.device
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.backend.compile:
            self.net = torch.compile(self.net)
        self.uses_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.model.modules())
        self.meter = Meter(self.task.num_timesteps)
        self.start_step = self.step
        self.started = time.monotonic()
        self.last_log_time, self.last_log_step, self.skipped_at_last_log = self.started, self.step, 0

    def elapsed(self, now: float) -> float:
        """Training seconds over all invocations of the run."""
        return self.elapsed_before + (now - self.started)

    def train_step(self, images: np.ndarray, labels_np: np.ndarray | None) -> None:
        """One optimisation step on this process's slice of the global batch: microbatched
        forward/backward, unscale, a finite check (non-finite: skip), clip, AdamW, EMA."""
        config, step, device, part = self.config, self.step, self.device, self.part
        x0 = to_model_input(images).to(device)  # (b, C, H, W) in [-1, 1]
        if config.flip:
            flip_gen = torch.Generator().manual_seed(mix_seed(config.seed, step, _FLIP))
            flips = (torch.rand(self.global_batch, generator=flip_gen) < 0.5)[part].to(device)
            x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
        labels = torch.from_numpy(labels_np).to(device) if labels_np is not None else None
        gen = torch.Generator(device=device).manual_seed(mix_seed(config.seed, step, _NOISE))
        inputs = self.task.inputs(x0, labels, generator=gen, global_batch=self.global_batch, part=part)

        net, model, scaler, micro, local_batch = self.net, self.model, self.scaler, self.micro, self.local_batch
        step_losses = []
        for i, start in enumerate(range(0, local_batch, micro)):
            chunk = {k: v[start : start + micro] for k, v in inputs.items()}
            last = start + micro >= local_batch
            sync = contextlib.nullcontext() if last or net is model else net.no_sync()  # type: ignore[operator]
            dropout_rng = (seeded_global_rng(mix_seed(config.seed, step, _DROPOUT, self.dist.rank, i), device)
                           if self.uses_dropout else contextlib.nullcontext())
            with sync, dropout_rng:
                terms = self.task.terms(net, chunk)
                loss = (terms["loss"] * chunk["weight"]).sum() / local_batch
                (loss * scaler.scale).backward()
            self.meter.add(terms, chunk.get("t"))
            step_losses.append(terms["loss"].detach())

        params = self.params
        if scaler.scale != 1.0:
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / scaler.scale)
        norm = float(grad_norm(params))  # the step's one host sync: is it finite?
        finite = math.isfinite(norm)
        if finite:
            if config.grad_clip is not None and norm > config.grad_clip:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], config.grad_clip / (norm + 1e-6))
            lr = learning_rate(step, config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            for rate, ema in self.emas.items():
                update_ema(ema, params, ema_rate_at(rate, step, warmup=config.ema_warmup))
            self.meter.add_scalar("grad_norm", norm)
        else:
            self.skipped += 1
            self.reporter.warn(f"step {step}: gradients not finite, step skipped (loss scale {scaler.scale:g})")
        scaler.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        if self.task.observes_losses:
            self.task.observe(
                _gather(inputs["t"], self.dist, part, self.global_batch),
                _gather(torch.cat(step_losses).float(), self.dist, part, self.global_batch),
            )
        self.step += 1

    def log(self, now: float, *, done: bool) -> dict[str, Any]:
        """The interval's metrics record (means over all processes, throughput, held-out
        evaluation when due), appended to metrics.jsonl and said on stderr by the main process."""
        step, global_batch, options = self.step, self.global_batch, self.options
        record: dict[str, Any] = self.meter.flush(self.dist, self.device)
        interval = max(now - self.last_log_time, 1e-9)
        record.update(
            step=step,
            images=step * global_batch,
            lr=learning_rate(step - 1, self.config),
            loss_scale=self.scaler.scale,
            images_per_s=(step - self.last_log_step) * global_batch / interval,
            elapsed_s=self.elapsed(now),
        )
        record["skipped"] = self.skipped - self.skipped_at_last_log  # steps skipped in this interval
        self.last_log_time, self.last_log_step, self.skipped_at_last_log = now, step, self.skipped
        if options.eval_every is None or step % options.eval_every == 0 or done:
            self.model.eval()
            record.update(self.task.evaluate(self.net))
            self.model.train()
        if self.dist.is_main:
            self.run.append_metrics(record)
            self.reporter.info(_log_line(record))
            if self.loggers is not None:
                self.loggers.log_scalars(record)
        return record

    def save(self) -> str:
        """Checkpoint the full training state at the current step, then prune old checkpoints."""
        at, config, model = self.step, self.config, self.model
        payload = make_payload(
            kind=self.task.kind,  # type: ignore[arg-type]
            model=model,
            config=self.task.config,
            diffusion=self.task.diffusion,
            step=at,
            ema={str(rate): _ema_state(model, self.emas[rate]) for rate in config.ema_rates},
            extra={
                "train_config": config.to_dict(),
                "train_state": {
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "task": self.task.state_dict(),
                    "elapsed": self.elapsed(time.monotonic()),
                },
            },
        )
        run = self.run
        path = run.checkpoint_path(at)
        try:
            save_checkpoint(path, payload)
        except CheckpointError as e:
            kept = run.latest_checkpoint()
            raise TrainError(f"{e}; {'kept the last good checkpoint ' + kept.name if kept else 'no checkpoint saved yet'}") from None
        run.prune(self.options.keep)  # only now that the new checkpoint is on disk
        return str(path)

    def preview(self) -> None:
        """A PNG grid sampled from the first EMA weights (in a copy of the model kept for this)."""
        at = self.step
        if self.preview_model is None:
            self.preview_model = copy.deepcopy(self.model).eval()
            for p in self.preview_model.parameters():
                p.requires_grad_(False)
        torch._foreach_copy_(list(self.preview_model.parameters()), self.emas[self.config.ema_rates[0]])
        shown = self.task.preview(self.preview_model, at)
        if shown is not None:
            target = self.run.preview_path(at)
            try:
                save_grid(shown[0], target, nrow=shown[1])
            except OSError as e:
                raise RunDirError(f"cannot write {target}: {write_reason(e)}") from None
            if self.loggers is not None:
                self.loggers.log_image("preview", make_grid(shown[0], nrow=shown[1]), at)  # the PNG's pixels


def train(
    task: Task,
    *,
    data: ImageData,
    config: TrainConfig,
    options: RunOptions,
    run: RunDir,
    backend: Backend,
    dist: Dist,
    reporter: Reporter,
    resume: bool,
    on_start: Callable[[], None] | None = None,
    loggers: Loggers | None = None,
) -> dict[str, Any]:
    """Train until the stop criterion; returns a summary (final step, checkpoint path, last metrics).
    `on_start` runs on the main process once a resumed checkpoint has loaded (before step one);
    `loggers` (main process only) receive each metrics record and preview, and are closed at the end."""
    state = _Run(task, config=config, options=options, run=run, backend=backend, dist=dist, reporter=reporter,
                 loggers=loggers)
    if resume:
        state.restore()
    if on_start is not None and dist.is_main:
        on_start()
    if loggers is not None:
        loggers.open(state.step)
    try:
        return _until_stopped(state, data)
    finally:
        if loggers is not None:
            loggers.close()


def _until_stopped(state: _Run, data: ImageData) -> dict[str, Any]:
    """Steps until --steps, --minutes or a signal, with the log / save / preview cadence; all
    processes agree on when to stop and save. Returns train's summary."""
    options, config, dist, device = state.options, state.config, state.dist, state.device
    reporter, run = state.reporter, state.run
    state.start()
    last_save_time = state.started
    last_path: str | None = None
    last_metrics: dict[str, Any] = {}
    stopped_by = "steps"

    def reached(step: int) -> bool:
        return options.steps is not None and step >= options.steps

    loader = BatchLoader(data, config.batch_size, seed=config.seed, start_step=state.step, rank=dist.rank,
                         world_size=dist.world_size)
    with loader, _StopFlag() as stop, reporter.progress("training", options.steps or 0, completed=state.step) as tick:
        if reached(state.step):
            reporter.info(f"already at step {state.step} (--steps {options.steps}); nothing to do")
        while not reached(state.step):
            batch_step, images, labels_np = next(loader)
            assert batch_step == state.step
            state.train_step(images, labels_np)
            tick(1)
            step = state.step

            now = time.monotonic()
            out_of_time = options.minutes is not None and now - state.started >= options.minutes * 60
            done = _agree(reached(step) or out_of_time or stop.requested, dist, device)
            if done and not reached(step):
                stopped_by = "time" if out_of_time else "signal"

            if step % options.log_every == 0 or done:
                last_metrics = state.log(now, done=done)
            due_save = step % options.save_every == 0 or now - last_save_time >= options.save_minutes * 60
            if _agree(due_save, dist, device) or done:
                if dist.is_main:
                    last_path = state.save()
                last_save_time = now
            if dist.is_main and options.preview_every and (step % options.preview_every == 0 or done):
                state.preview()
            if done:
                break
    return {
        "step": state.step,
        "steps_this_run": state.step - state.start_step,
        "checkpoint": last_path or _optional_str(run.latest_checkpoint()),
        "skipped": state.skipped,
        "metrics": last_metrics,
        "stopped_by": stopped_by,
    }


def _newest_usable_checkpoint(run: RunDir, model: nn.Module, config: TrainConfig):
    """(state, path, [(skipped path, why)]): the newest checkpoint of the run that loads whole
    (readable, digest intact, full training state for this model), and the newer ones that did
    not. (None, None, []) when the run has no checkpoint; RunDirError when none loads."""
    bad: list[tuple[Any, str]] = []
    names = {n for n, _ in model.named_parameters()}
    own = model.state_dict()
    for step in reversed(run.checkpoint_steps()):
        path = run.checkpoint_path(step)
        try:
            state = read_checkpoint(path)
            why = _unusable(state, own, names, config)
        except CheckpointError as e:
            text = str(e)
            why = text[len(str(path)) + 2 :] if text.startswith(f"{path}: ") else text
        if why is None:
            return state, path, bad
        bad.append((path, why))
    if bad:
        listed = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise RunDirError(f"no usable checkpoint in {run.checkpoints} ({listed})")
    return None, None, []


def _unusable(state: dict[str, Any], own: dict[str, Tensor], names: set[str], config: TrainConfig) -> str | None:
    """Why a read checkpoint cannot resume this run (None when it can)."""
    model, ema, ts = state.get("model"), state.get("ema"), state.get("train_state")
    if not isinstance(model, dict) or not isinstance(ema, dict) or not isinstance(ts, dict) or "step" not in state:
        return "not a training checkpoint (no training state)"
    if set(model) != set(own) or any(tuple(model[k].shape) != tuple(own[k].shape) for k in own):
        return "its weights do not fit the run's model"
    for rate in config.ema_rates:
        stored = ema.get(str(rate))
        if not isinstance(stored, dict) or not names <= set(stored):
            return f"no EMA weights for rate {rate}"
    if not all(k in ts for k in ("optimizer", "scaler", "task")):
        return "incomplete training state"
    return None


def _optional_str(path) -> str | None:
    return str(path) if path is not None else None


def _log_line(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}"]
    for key in ("loss", "mse", "vb", "acc@1", "val_acc@1"):
        if key in record and math.isfinite(record[key]):
            parts.append(f"{key} {record[key]:.4g}")
    parts.append(f"{record['images_per_s']:.1f} img/s")
    return " · ".join(parts)
