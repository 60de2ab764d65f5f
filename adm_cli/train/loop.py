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
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from adm_cli.backend import Backend, Dist, seeded_global_rng
from adm_cli.checkpoint import CheckpointError, make_payload, read_checkpoint, save_checkpoint
from adm_cli.config import ClassifierConfig, DiffusionConfig, TrainConfig, UNetConfig
from adm_cli.data.batches import BatchLoader, to_model_input
from adm_cli.data.datasets import ImageData
from adm_cli.data.images import save_grid
from adm_cli.nn.layers import set_grad_checkpointing
from adm_cli.reporting import Reporter
from adm_cli.train.metrics import Meter
from adm_cli.train.optim import LossScaler, ema_rate_at, grad_norm, learning_rate, make_optimizer, update_ema
from adm_cli.files import write_reason
from adm_cli.train.run_dir import RunDir, RunDirError

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

    def __post_init__(self) -> None:
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
) -> dict[str, Any]:
    """Train until the stop criterion; returns a summary (final step, checkpoint path, last metrics).
    `on_start` runs on the main process once a resumed checkpoint has loaded (before step one)."""
    device = backend.device
    global_batch = config.batch_size
    if global_batch % dist.world_size:
        raise TrainError(f"--batch-size {global_batch} is not divisible by the {dist.world_size} processes")
    local_batch = global_batch // dist.world_size
    micro = min(config.microbatch or local_batch, local_batch)
    part = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)

    model = task.model.to(device).train()
    set_grad_checkpointing(model, options.grad_checkpoint)
    if backend.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    optimizer = make_optimizer(model, config)
    scaler = LossScaler(config.precision == "fp16")
    emas = {rate: [p.detach().clone() for p in params] for rate in config.ema_rates}
    step, elapsed_before = 0, 0.0

    if resume:
        state, path, bad = _newest_usable_checkpoint(run, model, config)
        if path is not None:
            model.load_state_dict(state["model"])
            names = [n for n, _ in model.named_parameters()]
            for rate in config.ema_rates:
                stored = state["ema"][str(rate)]
                emas[rate] = [stored[n].to(device) for n in names]
            ts = state["train_state"]
            optimizer.load_state_dict(ts["optimizer"])
            scaler.load_state_dict(ts["scaler"])
            task.load_state_dict(ts["task"])
            step, elapsed_before = int(state["step"]), float(ts.get("elapsed", 0.0))
            del state
        if dist.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()  # every process has read its checkpoint before one is set aside
        for skipped_path, reason in bad:
            if dist.is_main:
                aside = run.set_aside(skipped_path)
                reporter.warn(f"skipped {skipped_path.name}: {reason}; renamed it to {aside.name}, resuming from {path.name}")
        if path is not None:
            reporter.info(f"resuming {run.root} from step {step} ({path.name})")
        else:
            reporter.info(f"resuming {run.root}: no checkpoint yet, starting at step 0")
        if dist.is_main:
            run.truncate_metrics(step)
    if on_start is not None and dist.is_main:
        on_start()

    net: nn.Module = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if backend.compile:
        net = torch.compile(net)
    uses_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    preview_model: nn.Module | None = None

    def save(at: int) -> str:
        payload = make_payload(
            kind=task.kind,  # type: ignore[arg-type]
            model=model,
            config=task.config,
            diffusion=task.diffusion,
            step=at,
            ema={str(rate): _ema_state(model, emas[rate]) for rate in config.ema_rates},
            extra={
                "train_config": config.to_dict(),
                "train_state": {
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "task": task.state_dict(),
                    "elapsed": elapsed_before + (time.monotonic() - started),
                },
            },
        )
        path = run.checkpoint_path(at)
        try:
            save_checkpoint(path, payload)
        except CheckpointError as e:
            kept = run.latest_checkpoint()
            raise TrainError(f"{e}; {'kept the last good checkpoint ' + kept.name if kept else 'no checkpoint saved yet'}") from None
        run.prune(options.keep)  # only now that the new checkpoint is on disk
        return str(path)

    def write_preview(at: int) -> None:
        nonlocal preview_model
        if preview_model is None:
            preview_model = copy.deepcopy(model).eval()
            for p in preview_model.parameters():
                p.requires_grad_(False)
        torch._foreach_copy_(list(preview_model.parameters()), emas[config.ema_rates[0]])
        shown = task.preview(preview_model, at)
        if shown is not None:
            target = run.preview_path(at)
            try:
                save_grid(shown[0], target, nrow=shown[1])
            except OSError as e:
                raise RunDirError(f"cannot write {target}: {write_reason(e)}") from None

    meter = Meter(task.num_timesteps)
    started = time.monotonic()
    last_save_time, last_log_time, last_log_step = started, started, step
    last_path: str | None = None
    last_metrics: dict[str, Any] = {}
    skipped = skipped_at_last_log = 0
    start_step = step
    stopped_by = "steps"

    loader = BatchLoader(data, global_batch, seed=config.seed, start_step=step, rank=dist.rank, world_size=dist.world_size)
    with loader, _StopFlag() as stop, reporter.progress("training", options.steps or 0, completed=step) as tick:
        if options.steps is not None and step >= options.steps:
            reporter.info(f"already at step {step} (--steps {options.steps}); nothing to do")
        while options.steps is None or step < options.steps:
            batch_step, images, labels_np = next(loader)
            assert batch_step == step
            x0 = to_model_input(images).to(device)  # (b, C, H, W) in [-1, 1]
            if config.flip:
                flip_gen = torch.Generator().manual_seed(mix_seed(config.seed, step, _FLIP))
                flips = (torch.rand(global_batch, generator=flip_gen) < 0.5)[part].to(device)
                x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
            labels = torch.from_numpy(labels_np).to(device) if labels_np is not None else None
            gen = torch.Generator(device=device).manual_seed(mix_seed(config.seed, step, _NOISE))
            inputs = task.inputs(x0, labels, generator=gen, global_batch=global_batch, part=part)

            step_losses = []
            for i, start in enumerate(range(0, local_batch, micro)):
                chunk = {k: v[start : start + micro] for k, v in inputs.items()}
                last = start + micro >= local_batch
                sync = contextlib.nullcontext() if last or net is model else net.no_sync()  # type: ignore[operator]
                dropout_rng = seeded_global_rng(mix_seed(config.seed, step, _DROPOUT, dist.rank, i), device) if uses_dropout else contextlib.nullcontext()
                with sync, dropout_rng:
                    terms = task.terms(net, chunk)
                    loss = (terms["loss"] * chunk["weight"]).sum() / local_batch
                    (loss * scaler.scale).backward()
                meter.add(terms, chunk.get("t"))
                step_losses.append(terms["loss"].detach())

            if scaler.scale != 1.0:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / scaler.scale)
            norm = float(grad_norm(params))  # the step's one host sync: is it finite?
            finite = math.isfinite(norm)
            if finite:
                if config.grad_clip is not None and norm > config.grad_clip:
                    torch._foreach_mul_([p.grad for p in params if p.grad is not None], config.grad_clip / (norm + 1e-6))
                lr = learning_rate(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                for rate, ema in emas.items():
                    update_ema(ema, params, ema_rate_at(rate, step, warmup=config.ema_warmup))
                meter.add_scalar("grad_norm", norm)
            else:
                skipped += 1
                reporter.warn(f"step {step}: gradients not finite, step skipped (loss scale {scaler.scale:g})")
            scaler.update(finite)
            optimizer.zero_grad(set_to_none=True)
            if task.observes_losses:
                task.observe(
                    _gather(inputs["t"], dist, part, global_batch),
                    _gather(torch.cat(step_losses).float(), dist, part, global_batch),
                )
            step += 1
            tick(1)

            now = time.monotonic()
            out_of_time = options.minutes is not None and now - started >= options.minutes * 60
            done = (options.steps is not None and step >= options.steps) or out_of_time
            done = _agree(done or stop.requested, dist, device)
            if done and not (options.steps is not None and step >= options.steps):
                stopped_by = "time" if out_of_time else "signal"

            if step % options.log_every == 0 or done:
                record = meter.flush(dist, device)
                interval = max(now - last_log_time, 1e-9)
                record.update(
                    step=step,
                    images=step * global_batch,
                    lr=learning_rate(step - 1, config),
                    loss_scale=scaler.scale,
                    images_per_s=(step - last_log_step) * global_batch / interval,
                    elapsed_s=elapsed_before + now - started,
                )
                record["skipped"] = skipped - skipped_at_last_log  # steps skipped in this interval
                last_log_time, last_log_step, skipped_at_last_log = now, step, skipped
                if options.eval_every is None or step % options.eval_every == 0 or done:
                    model.eval()
                    record.update(task.evaluate(net))
                    model.train()
                if dist.is_main:
                    run.append_metrics(record)
                    reporter.info(_log_line(record))
                last_metrics = record

            due_save = step % options.save_every == 0 or now - last_save_time >= options.save_minutes * 60
            if _agree(due_save, dist, device) or done:
                if dist.is_main:
                    last_path = save(step)
                last_save_time = now
            if dist.is_main and options.preview_every and (step % options.preview_every == 0 or done):
                write_preview(step)
            if done:
                break
    return {
        "step": step,
        "steps_this_run": step - start_step,
        "checkpoint": last_path or _optional_str(run.latest_checkpoint()),
        "skipped": skipped,
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
