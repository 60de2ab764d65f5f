#!/usr/bin/env python
"""Training-step throughput of adm against the reference guided-diffusion, in one run.

One network configuration is built twice, by the reference `UNetModel` (imported from
--reference, never copied into this repository) and by adm's `DiffusionTask`, and both get the
same deterministic non-zero weights (tests/golden_weights.deterministic_state_dict; the state-dict
names are identical). Both then train on the same uint8 batch and labels, in interleaved
repetitions. What one timed step contains:

    ref       guided-diffusion's TrainLoop.run_step, rebuilt from its library pieces (its
              train_util imports MPI and blobfile, so it is not imported): mp_trainer.zero_grad(),
              batch and labels .to(device), UniformSampler.sample, diffusion.training_losses(...)
              (hybrid: learned_range + LossType.MSE, noise drawn inside), (loss * weights).mean(),
              mp_trainer.backward, mp_trainer.optimize(AdamW) (which computes grad and param norms
              with one .item() per tensor and logs them), update_ema(rate 0.9999).
              Not included: its per-step log_loss_dict / log_step (Python logging of the loss
              quartiles) and the data loader (normalisation and flips run in loader processes).
    ref-fp16  the same with UNetModel(use_fp16=True) and MixedPrecisionTrainer(use_fp16=True)
              (fp16 network, flat fp32 master weights, dynamic loss scale; CUDA only).
    ref-notf32  `ref` with TF32 off (CUDA; plain `ref` runs with PyTorch's defaults, see below).
    fp32/bf16/fp16[-cl|-nocl][-tf32][-compile]
              adm: the per-step work of adm_cli.train.loop.train(), built from the same pieces
              (make_optimizer, LossScaler, update_ema, grad_norm, Meter, mix_seed, the dropout RNG fork):
              uint8 -> [-1, 1] (to_model_input), random flips, .to(device), t / noise / q_sample
              (task.inputs), task.terms under autocast, backward, unscale, grad norm and finiteness
              check, AdamW step, EMA, loss meter, zero_grad, timestep-sampler update. Not included:
              the background batch loading (BatchLoader threads) and the every-N-steps logging,
              checkpointing and previews. fp32 is the reference-exact mode (TF32 off on CUDA);
              -cl / -nocl force channels_last on / off (default: make_backend's, on for CUDA);
              -tf32 turns TF32 on for fp32 (CUDA); -compile wraps the network in torch.compile
              as train() does.
    loop-<adm mode>
              adm_cli.train.loop.train() itself on an in-memory dataset (BatchLoader included),
              warmup + steps steps per repetition (a fresh train() call each: new AdamW state),
              log_every = warmup; images/s from the metrics.jsonl it writes, the first record
              (the warm-up steps) excluded; its final checkpoint write is skipped (patched out for
              the call). A cross-check that the replica above does what the loop does.

Before timing, a numerical check in float32 with dropout 0 (fresh networks, same weights): the
same x_start, t and noise through guided-diffusion's training_losses and adm's task.terms (loss
and its terms per image), the gradients, and the parameters and EMA after ONE identical AdamW
step. On CUDA the check runs with TF32 off on both sides.

Timing: every mode first runs `--warmup` untimed steps (AdamW state, oneDNN / cuDNN caches,
torch.compile), then `--reps` rounds run `--steps` steps of every mode in turn (CUDA synchronised
around each block). Reported per mode: median and best images/s, ratios to `ref` (and to
`ref-fp16` where it ran), and on CUDA the memory: `state` = what the mode keeps allocated between
steps (weights, gradients kept, optimizer, EMA, fp16 copies) and `peak` = state + the largest
increase during a timed block, i.e. torch.cuda.max_memory_allocated of the mode run alone
(not counting the CUDA context or allocator caching). TF32 on CUDA: `ref` modes run with
PyTorch's defaults (what guided-diffusion's scripts get: cuDNN TF32 on, matmul TF32 off), adm
modes with make_backend's setting (off for fp32, on for bf16 / fp16); `ref-notf32` and
`fp32-tf32` give the like-for-like fp32 comparisons.

    python bench/bench_train.py --reference /path/to/guided-diffusion --config small32 --threads 2
    python bench/bench_train.py --reference ... --config imagenet64 --device cuda --batch 32 \
        --modes ref,ref-fp16,fp32,bf16,fp16,bf16-compile
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import adm_cli.train.loop as adm_loop
from adm_cli.backend import Dist, make_backend
from adm_cli.config import DIFFUSION_PRESETS, DiffusionConfig, ModelSpec, TrainConfig, UNetConfig
from adm_cli.data.batches import to_model_input
from adm_cli.data.datasets import ArrayData
from adm_cli.diffusion import q_sample
from adm_cli.reporting import Reporter
from adm_cli.train.diffusion import DiffusionTask
from adm_cli.train.loop import _DROPOUT, _FLIP, _NOISE, RunOptions, mix_seed
from adm_cli.train.metrics import Meter
from adm_cli.train.optim import LossScaler, ema_rate_at, grad_norm, learning_rate, make_optimizer, update_ema
from adm_cli.train.run_dir import RunDir
from tests.golden_weights import deterministic_state_dict

try:  # the loop's per-microbatch dropout RNG (moved from loop._seeded_rng to backend.seeded_global_rng)
    from adm_cli.backend import seeded_global_rng

    def _dropout_rng(seed: int, device: torch.device, enabled: bool):
        return seeded_global_rng(seed, device) if enabled else contextlib.nullcontext()
except ImportError:  # pragma: no cover - older adm_cli
    from adm_cli.train.loop import _seeded_rng as _dropout_rng

# Both sides of each configuration, spelled out: the reference constructor's arguments
# (attention_resolutions as downsampling factors, as its UNetModel takes them) and adm's
# UNetConfig (attention in pixels) + DiffusionConfig.
CONFIGS: dict[str, dict[str, Any]] = {
    "small32": dict(
        ref_unet=dict(
            image_size=32, in_channels=3, model_channels=64, out_channels=6, num_res_blocks=2,
            attention_resolutions=(2, 4), dropout=0.0, channel_mult=(1, 2, 2), num_classes=10,
            num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
            use_new_attention_order=False,
        ),
        spec=ModelSpec(
            UNetConfig(
                image_size=32, model_channels=64, num_res_blocks=2, attention_resolutions=(16, 8),
                channel_mult=(1, 2, 2), dropout=0.0, num_classes=10, learn_sigma=True, num_head_channels=32,
                use_scale_shift_norm=True, resblock_updown=True, attention_order="legacy",
            ),
            DiffusionConfig(steps=1000, schedule="linear", var_type="learned_range"),
        ),
        schedule="linear",
        batch=dict(cpu=32, cuda=32),
    ),
    # The published ImageNet 64x64 model (guided-diffusion README flags; adm's preset).
    "imagenet64": dict(
        ref_unet=dict(
            image_size=64, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3,
            attention_resolutions=(2, 4, 8), dropout=0.1, channel_mult=(1, 2, 3, 4), num_classes=1000,
            num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
            use_new_attention_order=True,
        ),
        spec=DIFFUSION_PRESETS["imagenet64"],
        schedule="cosine",
        batch=dict(cpu=4, cuda=32),
    ),
}

LR, EMA_RATE = 1e-4, 0.9999


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="path of a guided-diffusion checkout (openai/guided-diffusion)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 32 for small32; imagenet64 4 on CPU, 32 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode per repetition (default 2 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per mode first (default 1 on CPU, 3 on CUDA)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (each runs every mode once)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2 on CPU, PyTorch's default on CUDA)")
    p.add_argument("--modes", default=None, help="comma-separated (default: ref,fp32,bf16 on CPU; ref,ref-fp16,fp32,bf16,fp16 on CUDA)")
    p.add_argument("--no-check", action="store_true", help="skip the fp32 loss / one-step equality check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results (JSON) here")
    return p.parse_args(argv)


def import_reference(path: str) -> dict[str, Any]:
    """Only the library modules a training step needs (its dist_util / train_util / image_datasets
    import mpi4py and blobfile, and are not imported)."""
    sys.path.insert(0, str(Path(path).resolve()))
    from guided_diffusion import logger
    from guided_diffusion.fp16_util import MixedPrecisionTrainer
    from guided_diffusion.nn import update_ema
    from guided_diffusion.resample import UniformSampler
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.unet import UNetModel

    return dict(
        logger=logger, MixedPrecisionTrainer=MixedPrecisionTrainer, update_ema=update_ema,
        UniformSampler=UniformSampler, create_gaussian_diffusion=create_gaussian_diffusion, UNetModel=UNetModel,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def _mib(n: float) -> float:
    return n / 2**20


# --------------------------------------------------------------------------- the reference step


class RefTrainer:
    """guided-diffusion's TrainLoop.run_step without MPI / DDP (one process, microbatch = batch)."""

    def __init__(self, gd: dict[str, Any], cfg: dict[str, Any], state: dict[str, torch.Tensor], device: torch.device,
                 *, use_fp16: bool, dropout: float | None = None):
        unet_kwargs = dict(cfg["ref_unet"])
        if dropout is not None:
            unet_kwargs["dropout"] = dropout
        model = gd["UNetModel"](**unet_kwargs, use_fp16=use_fp16)
        model.load_state_dict(state)
        self.model = model.to(device).train()
        self.mp = gd["MixedPrecisionTrainer"](model=self.model, use_fp16=use_fp16)  # converts to fp16 itself
        self.opt = torch.optim.AdamW(self.mp.master_params, lr=LR, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.mp.master_params]  # TrainLoop: copy of master params
        self.diffusion = gd["create_gaussian_diffusion"](
            steps=1000, learn_sigma=True, noise_schedule=cfg["schedule"], timestep_respacing=""
        )
        self.sampler = gd["UniformSampler"](self.diffusion)
        self.update_ema = gd["update_ema"]
        self.device = device

    def forward_backward(self, x_start: torch.Tensor, y: torch.Tensor, t=None, noise=None) -> dict[str, torch.Tensor]:
        self.mp.zero_grad()
        micro = x_start.to(self.device)
        cond = {"y": y.to(self.device)}
        if t is None:
            t, weights = self.sampler.sample(micro.shape[0], self.device)
        else:
            weights = torch.ones(len(t), device=self.device)
        losses = self.diffusion.training_losses(self.model, micro, t, model_kwargs=cond, noise=noise)
        loss = (losses["loss"] * weights).mean()
        self.mp.backward(loss)
        return losses

    def optimize(self) -> bool:
        took_step = self.mp.optimize(self.opt)
        if took_step:
            self.update_ema(self.ema, self.mp.master_params, rate=EMA_RATE)
        return took_step

    def __call__(self, x_start: torch.Tensor, y: torch.Tensor) -> None:
        self.forward_backward(x_start, y)
        self.optimize()

    def named_master(self) -> dict[str, torch.Tensor]:
        """Master parameters by name (fp32 mode: the model's own parameters)."""
        names = [n for n, _ in self.model.named_parameters()]
        assert not self.mp.use_fp16
        return dict(zip(names, self.mp.master_params))


# --------------------------------------------------------------------------- adm's step


class AdmTrainer:
    """The per-step work of adm_cli.train.loop.train() (single process, no logging / saving),
    with the same objects it builds: see the module docstring."""

    def __init__(self, task: DiffusionTask, config: TrainConfig, backend):
        self.task, self.config, self.backend = task, config, backend
        self.device = device = backend.device
        model = task.model.to(device).train()
        if backend.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.params = list(model.parameters())
        self.optimizer = make_optimizer(model, config)
        self.scaler = LossScaler(config.precision == "fp16")
        self.emas = {rate: [p.detach().clone() for p in self.params] for rate in config.ema_rates}
        self.net: nn.Module = torch.compile(model) if backend.compile else model
        self.uses_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
        self.meter = Meter(task.num_timesteps)
        self.global_batch = self.local_batch = config.batch_size
        self.micro = min(config.microbatch or self.local_batch, self.local_batch)
        self.part = slice(0, self.local_batch)
        self.step = 0
        self.skipped = 0

    def inputs(self, images: np.ndarray, labels_np: np.ndarray | None) -> dict[str, torch.Tensor]:
        config, device, step = self.config, self.device, self.step
        x0 = to_model_input(images).to(device)
        if config.flip:
            flip_gen = torch.Generator().manual_seed(mix_seed(config.seed, step, _FLIP))
            flips = (torch.rand(self.global_batch, generator=flip_gen) < 0.5)[self.part].to(device)
            x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
        labels = torch.from_numpy(labels_np).to(device) if labels_np is not None else None
        gen = torch.Generator(device=device).manual_seed(mix_seed(config.seed, step, _NOISE))
        return self.task.inputs(x0, labels, generator=gen, global_batch=self.global_batch, part=self.part)

    def forward_backward(self, inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        all_terms = []
        for i, start in enumerate(range(0, self.local_batch, self.micro)):
            chunk = {k: v[start : start + self.micro] for k, v in inputs.items()}
            with _dropout_rng(mix_seed(self.config.seed, self.step, _DROPOUT, 0, i), self.device, self.uses_dropout):
                terms = self.task.terms(self.net, chunk)
                loss = (terms["loss"] * chunk["weight"]).sum() / self.local_batch
                (loss * self.scaler.scale).backward()
            self.meter.add(terms, chunk.get("t"))
            all_terms.append({k: v.detach() for k, v in terms.items()})
        return all_terms

    def optimize(self, inputs: dict[str, torch.Tensor], all_terms: list[dict[str, torch.Tensor]]) -> bool:
        config, params, scaler = self.config, self.params, self.scaler
        if scaler.scale != 1.0:
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / scaler.scale)
        norm = grad_norm(params)
        finite = bool(torch.isfinite(norm))
        if finite:
            if config.grad_clip is not None and float(norm) > config.grad_clip:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], config.grad_clip / (float(norm) + 1e-6))
            lr = learning_rate(self.step, config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            for rate, ema in self.emas.items():
                update_ema(ema, params, ema_rate_at(rate, self.step, warmup=config.ema_warmup))
            self.meter.add_scalar("grad_norm", float(norm))
        else:
            self.skipped += 1
            self.meter.add_scalar("skipped", 1.0)
        scaler.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        if "t" in inputs:
            self.task.observe(inputs["t"], torch.cat([t["loss"] for t in all_terms]).float())
        self.step += 1
        return finite

    def __call__(self, images: np.ndarray, labels_np: np.ndarray | None) -> None:
        inputs = self.inputs(images, labels_np)
        self.optimize(inputs, self.forward_backward(inputs))


MODE_HELP = "ref[-fp16][-notf32], fp32|bf16|fp16[-cl|-nocl][-tf32][-compile], loop-<adm mode>"


def ref_flags(name: str) -> dict[str, bool]:
    flags = name.split("-")
    if flags[0] != "ref" or not set(flags[1:]) <= {"fp16", "notf32"}:
        raise SystemExit(f"unknown mode {name!r} ({MODE_HELP})")
    return dict(fp16="fp16" in flags, notf32="notf32" in flags)


def adm_flags(name: str) -> tuple[dict[str, Any], bool]:
    """(make_adm keyword arguments, TF32 on) of an adm mode name."""
    flags = name.split("-")
    precision = flags[0]
    if precision not in ("fp32", "bf16", "fp16") or not set(flags[1:]) <= {"cl", "nocl", "compile", "tf32"}:
        raise SystemExit(f"unknown mode {name!r} ({MODE_HELP})")
    cl = True if "cl" in flags else False if "nocl" in flags else None
    # make_backend turns TF32 off for fp32 (reference-exact) and on otherwise; -tf32 forces it on.
    return dict(precision=precision, channels_last=cl, compile="compile" in flags), precision != "fp32" or "tf32" in flags


def make_adm(cfg: dict[str, Any], state: dict[str, torch.Tensor], device: str, *, batch: int, precision: str,
             channels_last: bool | None, compile: bool, dropout: float | None = None, seed: int = 0):
    spec: ModelSpec = cfg["spec"]
    if dropout is not None:
        spec = ModelSpec(dataclasses.replace(spec.unet, dropout=dropout), spec.diffusion)
    # guided-diffusion's settings: AdamW lr 1e-4 without weight decay, EMA 0.9999 without warm-up,
    # hybrid loss, uniform t; flips as its data loader (random_flip=True).
    config = TrainConfig(
        batch_size=batch, lr=LR, weight_decay=0.0, ema_rates=(EMA_RATE,), ema_warmup=False, precision=precision,
        seed=seed, flip=True, loss="hybrid", timestep_sampling="uniform",
    )
    backend = make_backend(device, precision, channels_last=channels_last, compile=compile)
    task = DiffusionTask(spec, config, backend)
    task.model.load_state_dict(state)  # strict: the parameter names are guided-diffusion's
    return task, config, backend


# --------------------------------------------------------------------------- TF32 per mode


def tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


# --------------------------------------------------------------------------- the check


def check_fp32(gd, cfg, state, device: torch.device, images: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """Same x_start / t / noise / weights through both, dropout 0: losses, gradients, one AdamW step."""
    tf32(False, False)
    B = len(images)
    ref = RefTrainer(gd, cfg, state, device, use_fp16=False, dropout=0.0)
    task, config, backend = make_adm(cfg, state, str(device), batch=B, precision="fp32", channels_last=None,
                                     compile=False, dropout=0.0, seed=seed)
    tf32(False, False)
    adm = AdmTrainer(task, config, backend)

    x0 = to_model_input(images).to(device)  # no flip: the same x_start on both sides
    y = torch.from_numpy(labels).to(device)
    g = torch.Generator().manual_seed(seed + 12345)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)

    ref_terms = ref.forward_backward(x0, y, t=t, noise=noise)
    ref_named = ref.named_master()
    ref_grads = {n: p.grad.detach().clone() for n, p in ref_named.items()}

    inputs = {"x0": x0, "x_t": q_sample(x0, t, noise, schedule=task.schedule), "t": t, "noise": noise,
              "weight": torch.ones(B, device=device), "y": y}
    adm_terms_list = adm.forward_backward(inputs)
    adm_terms = {k: torch.cat([d[k] for d in adm_terms_list]) for k in adm_terms_list[0]}
    adm_named = dict(adm.model.named_parameters())
    adm_grads = {n: p.grad.detach().clone() for n, p in adm_named.items()}

    ref.optimize()
    adm.optimize(inputs, adm_terms_list)
    sync(device)

    ref_terms = {k: v.detach() for k, v in ref_terms.items()}
    loss_ref = float(ref_terms["loss"].double().mean())
    loss_adm = float(adm_terms["loss"].double().mean())
    out: dict[str, Any] = dict(
        batch=B, loss_ref=loss_ref, loss_adm=loss_adm, loss_abs_diff=abs(loss_adm - loss_ref),
        loss_rel_diff=abs(loss_adm - loss_ref) / abs(loss_ref),
    )
    for k in ("loss", "mse", "vb"):
        d = (adm_terms[k].double() - ref_terms[k].double()).abs()
        out[f"{k}_per_image_max_abs_diff"] = float(d.max())
        out[f"{k}_per_image_max_rel_diff"] = float((d / ref_terms[k].double().abs()).max())
    assert set(ref_grads) == set(adm_grads)
    gmax = max(float(g.abs().max()) for g in ref_grads.values())
    gdiff = max(float((adm_grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)
    out.update(grad_max_abs=gmax, grad_max_abs_diff=gdiff, grad_max_rel_diff=gdiff / gmax)
    ref_ema = dict(zip(ref_named, ref.ema))
    adm_ema = dict(zip(adm_named, adm.emas[EMA_RATE]))
    pdiff = max(float((adm_named[n].detach() - ref_named[n].detach()).abs().max()) for n in ref_named)
    moved = max(float((ref_named[n].detach().cpu() - state[n]).abs().max()) for n in ref_named)
    ediff = max(float((adm_ema[n] - ref_ema[n]).abs().max()) for n in ref_named)
    # AdamW's first step moves each weight by about lr * sign(grad): a gradient that rounds to the
    # other sign near 0 moves the weight the other way (up to 2 lr); count such weights.
    flipped = sum(int(((adm_named[n].detach() - ref_named[n].detach()).abs() > 0.5 * LR).sum()) for n in ref_named)
    out.update(param_max_abs_diff_after_step=pdiff, param_max_move_of_step=moved, params_differing_by_over_half_lr=flipped,
               ema_max_abs_diff_after_step=ediff, lr=LR)
    del ref, adm, task
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- train() itself


@contextlib.contextmanager
def _no_final_checkpoint():
    """train() writes a checkpoint when it stops; the benchmark does not need it."""
    saved = adm_loop.make_payload, adm_loop.save_checkpoint
    adm_loop.make_payload = lambda **kw: {}
    adm_loop.save_checkpoint = lambda path, payload: None
    try:
        yield
    finally:
        adm_loop.make_payload, adm_loop.save_checkpoint = saved


class LoopRunner:
    """adm_cli.train.loop.train() on an in-memory dataset; returns the seconds of the timed steps."""

    def __init__(self, task, config, backend, images: np.ndarray, labels: np.ndarray, num_classes: int, tmp: Path):
        self.task, self.config, self.backend, self.tmp = task, config, backend, tmp
        reps = max(1, 256 // len(images))  # a few batches' worth, so the data order matters little
        self.data = ArrayData(np.concatenate([images] * reps), np.concatenate([labels] * reps), source="bench",
                              num_classes=num_classes)
        self.calls = 0

    def __call__(self, warmup: int, steps: int) -> float:
        self.calls += 1
        run = RunDir(self.tmp / f"loop-{id(self)}-{self.calls}")
        run.root.mkdir(parents=True)
        # The first log record covers the warm-up steps; the later ones (every `warmup` steps, and
        # at the end) the timed steps. Each record costs the loop a little (metrics line, model
        # .eval()/.train()), as it does in real runs every --log-every (default 50) steps.
        options = RunOptions(steps=warmup + steps, log_every=warmup or steps, save_every=10**9, save_minutes=1e9)
        with _no_final_checkpoint():
            adm_loop.train(self.task, data=self.data, config=self.config, options=options, run=run, backend=self.backend,
                           dist=Dist(), reporter=Reporter(quiet=True), resume=False)
        records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
        at = [0] + [r["step"] for r in records]
        timed = [(at[i + 1] - at[i], r["images_per_s"]) for i, r in enumerate(records) if at[i] >= warmup]
        assert sum(n for n, _ in timed) == steps and at[-1] == warmup + steps, at
        B = self.config.batch_size
        return sum(n * B / ips for n, ips in timed)


# --------------------------------------------------------------------------- main


class Mode:
    def __init__(self, name: str, run: Callable[[int], None] | None = None, loop: LoopRunner | None = None,
                 tf32: tuple[bool, bool] = (False, False)):
        self.name, self.run, self.loop, self.tf32 = name, run, loop, tf32
        self.warmup_s: float | None = None
        self.times: list[float] = []
        self.state_bytes: int | None = None
        self.transient_bytes = 0
        self.peak_total_bytes = 0


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 2)
    cfg = CONFIGS[args.config]
    B = args.batch or cfg["batch"]["cuda" if cuda else "cpu"]
    steps = args.steps or (10 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    names = [m.strip() for m in (args.modes or ("ref,ref-fp16,fp32,bf16,fp16" if cuda else "ref,fp32,bf16")).split(",") if m.strip()]
    if not cuda and any("fp16" in n.split("-") for n in names):
        raise SystemExit("fp16 modes need --device cuda")
    for n in names:  # fail on a misspelt mode before anything is built
        ref_flags(n) if n.startswith("ref") else adm_flags(n.removeprefix("loop-"))
    default_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # PyTorch's defaults
    gd = import_reference(args.reference)
    tmp = tempfile.TemporaryDirectory(prefix="adm-bench-train-")
    gd["logger"].configure(dir=str(Path(tmp.name) / "gd-log"), format_strs=[])  # logkv_mean in memory only

    # ---- weights (deterministic, from names), the batch (uint8 NHWC, as adm's loaders give it)
    shapes_model = gd["UNetModel"](**cfg["ref_unet"])
    state = deterministic_state_dict({k: tuple(v.shape) for k, v in shapes_model.state_dict().items()})
    n_params = sum(p.numel() for p in shapes_model.parameters())
    del shapes_model
    size, num_classes = cfg["ref_unet"]["image_size"], cfg["ref_unet"]["num_classes"]
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (B,), dtype=np.int64)
    x_start = to_model_input(images)  # what guided-diffusion's loader hands over: float (B, C, H, W) in [-1, 1]
    y = torch.from_numpy(labels)

    header = (
        f"# {args.config}: {n_params / 1e6:.2f}M parameters, {size}x{size}, batch {B}, {steps} timed steps x {args.reps} "
        f"reps (+{warmup} warm-up), device {device}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, load {_loadavg()}"
    )
    print(header, flush=True)

    # ---- numerical check
    check = None
    if not args.no_check:
        t0 = time.perf_counter()
        check = check_fp32(gd, cfg, state, device, images, labels, args.seed)
        ok = check["loss_rel_diff"] < 1e-5
        print(
            f"  fp32 check ({time.perf_counter() - t0:.1f} s, dropout 0, TF32 off): loss ref {check['loss_ref']:.8g} adm "
            f"{check['loss_adm']:.8g} |diff| {check['loss_abs_diff']:.2e} (rel {check['loss_rel_diff']:.1e}) {'OK' if ok else 'MISMATCH'}; "
            f"per-image max rel diff loss/mse/vb {check['loss_per_image_max_rel_diff']:.1e}/{check['mse_per_image_max_rel_diff']:.1e}/"
            f"{check['vb_per_image_max_rel_diff']:.1e}; grads max |diff| {check['grad_max_abs_diff']:.2e} "
            f"(max |g| {check['grad_max_abs']:.2e}); params after 1 AdamW step max |diff| {check['param_max_abs_diff_after_step']:.2e} "
            f"(step moved them by <= {check['param_max_move_of_step']:.2e}; {check['params_differing_by_over_half_lr']} weights differ by > lr/2); "
            f"EMA max |diff| {check['ema_max_abs_diff_after_step']:.2e}",
            flush=True,
        )

    # ---- the modes (each built, then warmed up, in turn: its resident memory is measured)
    modes: list[Mode] = []
    for name in names:
        mem0 = torch.cuda.memory_allocated(device) if cuda else 0
        if name.startswith("ref"):
            rf = ref_flags(name)
            tr = RefTrainer(gd, cfg, state, device, use_fp16=rf["fp16"])
            mode = Mode(name, run=lambda n, tr=tr: [tr(x_start, y) for _ in range(n)],
                        tf32=(False, False) if rf["notf32"] else default_tf32)
        else:
            loop = name.startswith("loop-")
            flags, on = adm_flags(name[5:] if loop else name)
            task, config, backend = make_adm(cfg, state, str(device), batch=B, seed=args.seed, **flags)
            mode_tf32 = (on, on)
            if loop:
                mode = Mode(name, loop=LoopRunner(task, config, backend, images, labels, num_classes, Path(tmp.name)), tf32=mode_tf32)
            else:
                tr = AdmTrainer(task, config, backend)
                mode = Mode(name, run=lambda n, tr=tr: [tr(images, labels) for _ in range(n)], tf32=mode_tf32)
        tf32(*mode.tf32)
        sync(device)
        t0 = time.perf_counter()
        if mode.loop is None:
            mode.run(warmup)
        sync(device)
        mode.warmup_s = time.perf_counter() - t0
        if cuda:
            mode.state_bytes = torch.cuda.memory_allocated(device) - mem0
        modes.append(mode)
        print(f"  built + {warmup} warm-up steps {name:<16} {mode.warmup_s:8.2f} s", flush=True)

    # ---- interleaved timed rounds
    load_before = _loadavg()
    for r in range(args.reps):
        for mode in modes:
            tf32(*mode.tf32)
            if cuda:
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            if mode.loop is not None:
                mode.times.append(mode.loop(warmup, steps))  # train() itself: its own clock, warm-up records dropped
            else:
                sync(device)
                t0 = time.perf_counter()
                mode.run(steps)
                sync(device)
                mode.times.append(time.perf_counter() - t0)
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                mode.transient_bytes = max(mode.transient_bytes, peak - base)
                mode.peak_total_bytes = max(mode.peak_total_bytes, peak)
        print(f"  round {r + 1}/{args.reps}: " + ", ".join(f"{m.name} {steps * B / m.times[-1]:.2f} img/s" for m in modes), flush=True)

    # ---- results
    def med_best(mode: Mode) -> tuple[float, float]:
        return statistics.median(mode.times), min(mode.times)

    by_name = {m.name: m for m in modes}
    rows = []
    for mode in modes:
        med, best = med_best(mode)
        row: dict[str, Any] = dict(
            mode=mode.name, img_per_s=steps * B / med, img_per_s_best=steps * B / best,
            s_per_step=med / steps, s_per_step_best=best / steps, warmup_s=mode.warmup_s,
            times_s=mode.times,
        )
        for ref_name, key in (("ref", "ratio"), ("ref-fp16", "ratio_ref_fp16")):
            if ref_name in by_name:
                rm, rb = med_best(by_name[ref_name])
                row[key], row[key + "_best"] = rm / med, rb / best
        if cuda:
            if mode.loop is None:
                row.update(state_mib=_mib(mode.state_bytes), peak_mib=_mib(mode.state_bytes + mode.transient_bytes))
            else:  # train() allocates its optimizer and EMA inside the call
                row.update(state_mib=None, peak_mib=_mib(mode.state_bytes + mode.transient_bytes))
            row["peak_total_mib"] = _mib(mode.peak_total_bytes)
        rows.append(row)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    print()
    print(f"load average {load_before} -> {_loadavg()}")
    mem_cols = " state MiB | peak MiB |" if cuda else ""
    print(f"| mode | img/s median (best) of {args.reps} | s/step median | × ref median (best) |"
          + (" × ref-fp16 median |" if "ref-fp16" in by_name else "") + mem_cols)
    print("|---|---:|---:|---:|" + ("---:|" if "ref-fp16" in by_name else "") + ("---:|---:|" if cuda else ""))
    for row in rows:
        line = (f"| {row['mode']} | {row['img_per_s']:.2f} ({row['img_per_s_best']:.2f}) | {row['s_per_step']:.3f} "
                f"| {fmt(row.get('ratio'), '.2f')} ({fmt(row.get('ratio_best'), '.2f')}) |")
        if "ref-fp16" in by_name:
            line += f" {fmt(row.get('ratio_ref_fp16'), '.2f')} |"
        if cuda:
            line += f" {fmt(row['state_mib'], '.0f')} | {row['peak_mib']:.0f} |"
        print(line)
    meta = dict(
        bench="train", config=args.config, params=n_params, batch=B, steps=steps, warmup=warmup, reps=args.reps,
        device=str(device), device_name=torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        threads=torch.get_num_threads(), torch=torch.__version__, tf32_defaults=default_tf32,
    )
    for row in rows:  # one JSON line per mode, for logs
        print(json.dumps({**meta, **{k: v for k, v in row.items() if k != "times_s"}}))
    if check is not None:
        print(json.dumps({**meta, "mode": "check-fp32", **check}))
    result = dict(meta, load_before=load_before, load_after=_loadavg(), check_fp32=check, rows=rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
