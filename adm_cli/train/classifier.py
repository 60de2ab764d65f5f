"""Noise-aware classifier training for `adm train-classifier` (ADM Sec. 4.1; guided-diffusion
classifier_train.py): the classifier sees x_t = q_sample(x_0, t, ε) at t drawn uniformly from the
schedule of the diffusion model it will guide, and t itself; `noised=False` trains on clean
images at t = 0. Validation accuracy (top-1, top-5) is reported overall and per t quartile, on
the same t and noise at every evaluation so the numbers are comparable over a run."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adm_cli.backend import Backend, Dist, seeded_global_rng
from adm_cli.config import ClassifierConfig, DiffusionConfig, TrainConfig
from adm_cli.data.batches import random_resized_crop, to_model_input
from adm_cli.data.datasets import ImageData
from adm_cli.diffusion import make_schedule, model_timesteps, q_sample
from adm_cli.nn import NoisyClassifier
from adm_cli.train.loop import INIT_STREAM, mix_seed
from adm_cli.train.metrics import Meter
from adm_cli.train.objectives import classifier_terms

__all__ = ["ClassifierTask"]

_VAL_STREAM, _CROP_STREAM = 99, 4


class ClassifierTask:
    kind = "classifier"
    observes_losses = False

    def __init__(
        self,
        config: ClassifierConfig,
        diffusion: DiffusionConfig,
        train: TrainConfig,
        backend: Backend,
        *,
        val: ImageData | None = None,
        val_batch: int = 64,
        dist: Dist = Dist(),
    ):
        self.config = config
        self.diffusion = diffusion
        self.train_config = train
        self.backend = backend
        with seeded_global_rng(mix_seed(train.seed, 0, INIT_STREAM)):  # the same initial weights for the same seed
            self.model: nn.Module = NoisyClassifier(config)
        self.schedule = make_schedule(diffusion, None).to(backend.device)
        self.val = val
        self.val_batch = val_batch
        self.dist = dist
        self._crop_calls = 0

    @property
    def num_timesteps(self) -> int | None:
        return self.diffusion.steps if self.train_config.noised else None

    def _noised(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return q_sample(x0, t, noise, schedule=self.schedule) if self.train_config.noised else x0

    def inputs(self, x0: Tensor, labels: Tensor | None, *, generator: torch.Generator, global_batch: int, part: slice) -> dict[str, Tensor]:
        if labels is None:
            raise ValueError("classifier training needs labelled data")
        device = generator.device
        if self.train_config.random_crop:
            crop_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator, device=device)))
            x0 = random_resized_crop(x0.cpu(), crop_gen).to(device)
        if self.train_config.noised:
            t = torch.randint(self.diffusion.steps, (global_batch,), generator=generator, device=device)[part]
        else:
            t = torch.zeros(global_batch, dtype=torch.long, device=device)[part]
        noise = torch.randn((global_batch, *x0.shape[1:]), generator=generator, device=device)[part]
        return {"x_t": self._noised(x0, t, noise), "t": t, "y": labels, "weight": torch.ones_like(t, dtype=torch.float32)}

    def _forward(self, net: nn.Module, x_t: Tensor, t: Tensor) -> Tensor:
        if self.backend.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self.backend.autocast():
            return net(x_t, model_timesteps(self.schedule, t, rescale=self.diffusion.rescale_timesteps))

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return classifier_terms(self._forward(net, inputs["x_t"], inputs["t"]), inputs["y"])

    def observe(self, t: Tensor, losses: Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def preview(self, model: nn.Module, step: int) -> None:
        return None

    @torch.no_grad()
    def evaluate(self, net: nn.Module) -> dict[str, float]:
        """Held-out loss and accuracy, overall and per t quartile (prefix "val_")."""
        if self.val is None:
            return {}
        device = self.backend.device
        model = self.model  # the bare network: no DDP hooks for a forward-only pass
        T = self.diffusion.steps
        meter = Meter(T)
        for j, start in enumerate(range(0, len(self.val), self.val_batch)):
            if j % self.dist.world_size != self.dist.rank:
                continue
            images, labels = self.val.get(np.arange(start, min(start + self.val_batch, len(self.val))))
            x0 = to_model_input(images).to(device)
            y = torch.from_numpy(labels).to(device)
            gen = torch.Generator(device=device).manual_seed(mix_seed(self.train_config.seed, _VAL_STREAM, j))
            b = x0.shape[0]
            t = torch.randint(T, (b,), generator=gen, device=device) if self.train_config.noised else torch.zeros(b, dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            terms = classifier_terms(self._forward(model, self._noised(x0, t, noise), t), y)
            meter.add(terms, t if self.train_config.noised else None, prefix="val_")
        return meter.flush(self.dist, device)

