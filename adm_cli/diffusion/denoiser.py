"""The guided denoiser: the one seam between networks and samplers.

A `Denoiser` is built once from the network, the (respaced) schedule, the model's output type,
the x̂_0 correction (clipping or dynamic thresholding) and a `Guidance`. Called at (x_t, t), t
being step indices into its schedule, it returns `PMeanVar`: x̂_0 and ε̂ for every sampler, the
mean and variance of p(x_{t-1} | x_t) for the ancestral one. Guidance composes inside it:

    classifier, mean shift   μ' = μ + s Σ ∇ log p(y | x_t)                 (ADM Alg. 1)
    classifier, score shift  ε' = ε̂ - s √(1 - ᾱ_t) ∇ log p(y | x_t)       (ADM Alg. 2)
    classifier-free          ε̃ = (1 + w) ε(x_t, y) - w ε(x_t, ∅)          (Ho & Salimans 2021, Eq. 6)

CFG acts on the network output (the ε, x̂_0 or v channels, each affine in ε̂ at fixed x_t, so
the guided ε̂ is the same whichever the model predicts; a learned variance comes from the
conditional pass), then the classifier shift acts on the result, so both together give the sum
of both shifts. The conditional and unconditional passes run as one forward of a doubled batch.
Samplers never see networks, classifiers or labels: only this object and its `schedule`.

Where the x̂_0 correction acts on a score-shifted x̂_0: guided-diffusion (DDIM) corrects the
network's x̂_0 and shifts after it, unclipped; DPM-Solver's authors correct the guided x̂_0
(`correcting_x0_fn` after the guided noise prediction). `correct_guided_x0=True` also corrects
after the shift, as the data-prediction solvers need: the shift moves x̂_0 by
s (1 - ᾱ_t) / √ᾱ_t · ∇, which at the first step of a cosine schedule (ᾱ_999 ≈ 2e-9) is 2e4 times
the gradient, and without the correction every image saturates.

Glossary: model_fn(x, model_t, y) -> network output; grad_fn(x, model_t, y) -> ∇_{x_t} log p(y | x_t)
(`classifier_gradient` of a classifier's logits); y = class labels (B,) or None; null_label = the
class index meaning "no class" (label dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion.gaussian import PMeanVar, p_mean_variance, predict_eps_from_x0, q_posterior
from adm_cli.diffusion.guidance import classifier_free, classifier_grad, condition_mean, condition_score
from adm_cli.diffusion.schedule import Schedule, model_timesteps

__all__ = ["Denoiser", "GradFn", "Guidance", "NetworkFn", "classifier_gradient", "dynamic_threshold"]

NetworkFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
GradFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
ClassifierMode = Literal["mean", "score"]


@dataclass(frozen=True)
class Guidance:
    """How samples are pulled towards their class.

    classifier_scale  s of ADM (0: no classifier guidance)
    classifier_mode   "mean" (ADM Alg. 1, ancestral sampling only) or "score" (ADM Alg. 2)
    cfg_scale         w of classifier-free guidance (0: the conditional model as it is);
                      diffusers' guidance_scale is 1 + w
    interval          (lo, hi): guide only where lo <= original timestep <= hi; None: everywhere
    """

    classifier_scale: float = 0.0
    classifier_mode: ClassifierMode = "score"
    cfg_scale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.classifier_mode not in ("mean", "score"):
            raise ValueError(f"classifier_mode must be 'mean' or 'score', got {self.classifier_mode!r}")
        if self.interval is not None and not self.interval[0] <= self.interval[1]:
            raise ValueError(f"guidance interval needs lo <= hi, got {self.interval}")

    @property
    def uses_classifier(self) -> bool:
        return self.classifier_scale != 0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 0


def classifier_gradient(classifier_fn: Callable[[Tensor, Tensor], Tensor]) -> GradFn:
    """grad_fn(x_t, model_t, y) = ∇_{x_t} log softmax(classifier_fn(x_t, model_t))[y] (ADM Algs. 1-2)."""

    def grad_fn(x: Tensor, model_t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise ValueError("classifier guidance needs class labels")
        return classifier_grad(classifier_fn, x, model_t, y, 1.0)

    return grad_fn


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding of x̂_0 (Saharia et al. 2022, Sec. 2.3; DPM-Solver++ Sec. 5).

    s = max(quantile_ratio(|x̂_0|) per image, max_value); x̂_0 <- clamp(x̂_0, -s, s) · max_value / s.
    """
    flat = x0.abs().reshape(x0.shape[0], -1)  # (B, C·H·W)
    s = torch.quantile(flat, ratio, dim=1).clamp(min=max_value)  # x̂_0 is float32 or float64 here
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)


class Denoiser:
    """x̂_0, ε̂ and p(x_{t-1} | x_t) of a (guided) network at step indices t of `schedule`."""

    def __init__(
        self,
        model_fn: NetworkFn,
        *,
        schedule: Schedule,
        config: DiffusionConfig,
        labels: Tensor | None = None,
        guidance: Guidance = Guidance(),
        grad_fn: GradFn | None = None,
        null_label: int | None = None,
        clip_denoised: bool = True,
        threshold: float | None = None,
        correct_guided_x0: bool = False,
    ) -> None:
        if guidance.uses_classifier and grad_fn is None:
            raise ValueError("classifier guidance needs grad_fn")
        if guidance.uses_cfg and (null_label is None or labels is None):
            raise ValueError("classifier-free guidance needs labels and a model with a null class")
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"the dynamic-threshold ratio must lie in (0, 1], got {threshold}")
        self.model_fn = model_fn
        self.schedule = schedule
        self.config = config
        self.labels = labels
        self.guidance = guidance
        self.grad_fn = grad_fn
        self.null_label = null_label
        self.clip_denoised = clip_denoised
        self.threshold = threshold
        self.correct_guided_x0 = correct_guided_x0

    def network(self, x: Tensor, model_t: Tensor, active: Tensor | None) -> Tensor:
        """The network output at (x_t, t), with classifier-free guidance where `active` (B,) is True."""
        y = self.labels
        if not self.guidance.uses_cfg or active is None or not bool(active.any()):
            return self.model_fn(x, model_t, y)
        assert y is not None and self.null_label is not None
        both = self.model_fn(
            torch.cat([x, x]),  # (2B, C, H, W): conditional half, then unconditional half
            torch.cat([model_t, model_t]),
            torch.cat([y, torch.full_like(y, self.null_label)]),
        )
        cond, uncond = both.chunk(2)
        c = x.shape[1]
        w = self.guidance.cfg_scale * active.to(cond.dtype).reshape(-1, 1, 1, 1)
        guided = classifier_free(cond[:, :c], uncond[:, :c], w)
        return torch.cat([guided, cond[:, c:]], dim=1)  # a learned variance comes from the conditional pass

    def __call__(self, x_t: Tensor, t: Tensor) -> PMeanVar:
        model_t = model_timesteps(self.schedule, t, rescale=self.config.rescale_timesteps)
        active = self._active(t)
        output = self.network(x_t, model_t, active)
        out = p_mean_variance(
            output, x_t, t, schedule=self.schedule, config=self.config,
            clip_denoised=False, denoised_fn=self._correct_x0,
        )
        if not self.guidance.uses_classifier or not bool(active.any()):
            return out
        assert self.grad_fn is not None
        scale = self.guidance.classifier_scale * active.to(out.x0_pred.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        grad = self.grad_fn(x_t, model_t, self.labels) * scale
        if self.guidance.classifier_mode == "mean":
            return condition_mean(grad, out)
        out = condition_score(grad, out, x_t, t, schedule=self.schedule)
        return self._correct(out, x_t, t) if self.correct_guided_x0 else out

    def _correct_x0(self, x0: Tensor) -> Tensor:
        """The x̂_0 correction: the dynamic threshold, else clipping to [-1, 1], else none."""
        if self.threshold is not None:
            return dynamic_threshold(x0, self.threshold)
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def _correct(self, out: PMeanVar, x_t: Tensor, t: Tensor) -> PMeanVar:
        """`_correct_x0` applied to a guided x̂_0, with ε̂ and the posterior mean recomputed from it."""
        if self.threshold is None and not self.clip_denoised:
            return out
        x0 = self._correct_x0(out.x0_pred)
        eps = predict_eps_from_x0(x_t, t, x0, schedule=self.schedule)
        mean, _, _ = q_posterior(x0, x_t, t, schedule=self.schedule)
        return out._replace(mean=mean, x0_pred=x0, eps_pred=eps)

    def _active(self, t: Tensor) -> Tensor:
        """Where guidance acts: (B,) bool, from the original-process timestep of each step."""
        if self.guidance.interval is None:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        original = self.schedule.timesteps.to(t.device)[t]
        lo, hi = self.guidance.interval
        return (original >= lo) & (original <= hi)
