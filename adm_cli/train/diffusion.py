"""Diffusion-model training: the task the loop runs for `adm train-diffusion` (ADM Sec. 3-5;
IDDPM Sec. 3). Super-resolution models train here too: the low-resolution input is the clean
image downsampled by area averaging (guided-diffusion super_res_train.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adm_cli.backend import Backend, seeded_global_rng
from adm_cli.config import ModelSpec, TrainConfig
from adm_cli.data.batches import to_model_input
from adm_cli.data.datasets import ImageData
from adm_cli.data.images import to_uint8
from adm_cli.diffusion import Denoiser, make_schedule, model_timesteps, q_sample, sample_ddpm
from adm_cli.nn import build_unet
from adm_cli.train.loop import INIT_STREAM, mix_seed
from adm_cli.train.objectives import diffusion_terms, input_perturbed_noise
from adm_cli.train.timesteps import make_timestep_sampler

__all__ = ["DiffusionTask"]


class DiffusionTask:
    """ε-, x_0- or v-prediction with L_simple / hybrid / KL, uniform or loss-aware t, optionally
    Min-SNR-γ or P2 weighting and input perturbation (DDPM-IP)."""

    def __init__(
        self,
        spec: ModelSpec,
        config: TrainConfig,
        backend: Backend,
        *,
        preview_images: int = 16,
        preview_steps: int = 50,
        preview_data: ImageData | None = None,
    ):
        self.config = spec.unet
        self.diffusion = spec.diffusion
        self.kind = "super-res" if spec.unet.is_super_res else "diffusion"
        self.train_config = config
        self.backend = backend
        with seeded_global_rng(mix_seed(config.seed, 0, INIT_STREAM)):  # the same initial weights for the same seed
            self.model: nn.Module = build_unet(spec.unet)
        self.schedule = make_schedule(spec.diffusion, None).to(backend.device)
        self.sampler = make_timestep_sampler(config.timestep_sampling, spec.diffusion.steps)
        self.preview_images = preview_images
        self.preview_steps = min(preview_steps, spec.diffusion.steps)
        self.preview_data = preview_data
        if config.loss == "hybrid" and not spec.diffusion.learned_variance:
            raise ValueError("the hybrid loss needs a learned variance (--learn-sigma)")
        if config.label_dropout > 0 and not spec.unet.null_class:
            raise ValueError("label dropout needs a model with a null class")

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.steps

    @property
    def observes_losses(self) -> bool:
        return self.sampler.observes_losses

    # ------------------------------------------------------------------ one step

    def inputs(self, x0: Tensor, labels: Tensor | None, *, generator: torch.Generator, global_batch: int, part: slice) -> dict[str, Tensor]:
        device = generator.device
        t, weight = self.sampler.sample(global_batch, generator)
        noise = torch.randn((global_batch, *x0.shape[1:]), generator=generator, device=device)  # (B, C, H, W)
        t, weight, noise = t[part], weight[part], noise[part]
        out = {"x0": x0, "t": t, "noise": noise, "weight": weight}
        if self.config.num_classes is not None:
            assert labels is not None
            if self.train_config.label_dropout > 0:
                drop = (torch.rand(global_batch, generator=generator, device=device) < self.train_config.label_dropout)[part]
                labels = torch.where(drop, torch.full_like(labels, self.config.num_classes), labels)
            out["y"] = labels
        gamma = self.train_config.input_perturbation
        noised_with = noise
        if gamma > 0:  # drawn only when on (and last), so runs without it keep their random streams
            xi = torch.randn((global_batch, *x0.shape[1:]), generator=generator, device=device)[part]  # (B, C, H, W)
            noised_with = input_perturbed_noise(noise, xi, gamma)
        out["x_t"] = q_sample(x0, t, noised_with, schedule=self.schedule)
        if self.config.low_res_size is not None:
            out["low_res"] = F.interpolate(x0, size=self.config.low_res_size, mode="area")  # (B, C, h, w)
        return out

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        t = inputs["t"]
        kwargs = {k: inputs[k] for k in ("y", "low_res") if k in inputs}
        x_t = inputs["x_t"]
        if self.backend.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self.backend.autocast():
            out = net(x_t, model_timesteps(self.schedule, t, rescale=self.diffusion.rescale_timesteps), **kwargs)
        return diffusion_terms(
            out, x0=inputs["x0"], x_t=inputs["x_t"], t=t, noise=inputs["noise"],
            schedule=self.schedule, config=self.diffusion, loss=self.train_config.loss,
            min_snr_gamma=self.train_config.min_snr_gamma,
            p2_gamma=self.train_config.p2_gamma, p2_k=self.train_config.p2_k,
        )

    def observe(self, t: Tensor, losses: Tensor) -> None:
        self.sampler.update(t, losses)

    def evaluate(self, net: nn.Module) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"timestep_sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state.get("timestep_sampler", {}))

    # ------------------------------------------------------------------ previews

    @torch.no_grad()
    def preview(self, model: nn.Module, step: int) -> tuple[np.ndarray, int] | None:
        """DDPM samples over `preview_steps` respaced steps from fixed seeds (the same noise at every
        preview, so grids compare over training); one class per column. DDPM rather than DDIM:
        early in training DDIM leaves visible noise that ancestral sampling does not."""
        n = self.preview_images
        device = self.backend.device
        c, size = self.config.in_channels, self.config.image_size
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        x_T = torch.stack([torch.randn((c, size, size), generator=g) for g in gens])
        kwargs: dict[str, Tensor] = {}
        labels: Tensor | None = None
        nrow = int(np.ceil(np.sqrt(n)))
        if self.config.num_classes is not None:
            nrow = min(self.config.num_classes, 10)  # one class per column (the first 10)
            labels = (torch.arange(n) % nrow).to(device)
        if self.config.low_res_size is not None:
            if self.preview_data is None or len(self.preview_data) == 0:
                return None
            images, _ = self.preview_data.get(np.arange(min(n, len(self.preview_data))))
            n = images.shape[0]
            x_T, gens = x_T[:n], gens[:n]
            labels = None if labels is None else labels[:n]
            kwargs["low_res"] = F.interpolate(to_model_input(images).to(device), size=self.config.low_res_size, mode="area")
        schedule = make_schedule(self.diffusion, str(self.preview_steps)).to(device)

        def model_fn(x: Tensor, model_t: Tensor, y: Tensor | None) -> Tensor:
            with self.backend.autocast():
                return model(x, model_t, y=y, **kwargs).float()

        denoise = Denoiser(model_fn, schedule=schedule, config=self.diffusion, labels=labels)
        x0 = sample_ddpm(denoise, x_T.to(device), generators=gens)
        return to_uint8(x0.cpu()), nrow
