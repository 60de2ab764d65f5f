"""Samplers and guidance: consistency, determinism, batch-size independence, inversion."""

from __future__ import annotations

import pytest
import torch

from adm_cli.config import DiffusionConfig
from tests.diffusion_helpers import denoiser
from adm_cli.diffusion import (
    PMeanVar,
    classifier_free,
    classifier_grad,
    condition_mean,
    condition_score,
    ddim_invert,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    make_schedule,
    p_mean_variance,
    per_image_noise,
    q_sample,
    sample_ddim,
    sample_ddpm,
)

SHAPE = (4, 3, 4, 4)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def toy_model(channels: int = 3):
    """A deterministic x- and t-dependent stand-in for the UNet."""
    w = torch.linspace(-0.5, 0.5, channels).view(1, channels, 1, 1)

    def model_fn(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        reps = channels // x.shape[1]
        return torch.tanh(torch.cat([x] * reps, dim=1) * (1 + w) + model_t.float().view(-1, 1, 1, 1) / 1000)

    return model_fn


@pytest.mark.parametrize("spec", [None, "ddim25", "90,60,60,20,20"])
def test_ddim_eta1_sigma_is_ddpm_posterior_std(spec: str | None) -> None:
    sch = make_schedule(DiffusionConfig(schedule="cosine"), spec)
    torch.testing.assert_close(ddim_sigma(sch, 1.0) ** 2, sch.posterior_var, rtol=1e-10, atol=1e-18)
    assert ddim_sigma(sch, 0.0).abs().max().item() == 0.0


def test_ddim_eta1_step_is_the_ddpm_step() -> None:
    config = DiffusionConfig()
    sch = make_schedule(config, "100")
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 1, 50, 99])
    out = p_mean_variance(eps, x_t, t, schedule=sch, config=config, clip_denoised=False)
    torch.testing.assert_close(ddim_step(out, x_t, t, z, schedule=sch, eta=1.0), ddpm_step(out, x_t, t, z))


def test_float32_steps_match_float64() -> None:
    """Coefficients come from float64 tables, so float32 steps lose no more than float32 rounding."""
    config = DiffusionConfig()
    sch = make_schedule(config)
    g = torch.Generator().manual_seed(1)
    x_t, eps, z = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 1, 2, 500])
    for eta in (0.0, 0.5, 1.0):
        steps = []
        for d in (torch.float32, torch.float64):
            out = p_mean_variance(eps.to(d), x_t.to(d), t, schedule=sch, config=config)
            steps.append(ddim_step(out, x_t.to(d), t, z.to(d), schedule=sch, eta=eta))
        assert steps[0].dtype == torch.float32
        torch.testing.assert_close(steps[0].double(), steps[1], rtol=0, atol=1e-6)


def test_per_image_noise() -> None:
    x = torch.zeros(3, 2, 5, 5, dtype=torch.float64)
    noise = per_image_noise(x, gens(7, 8, 9))
    assert noise.dtype == torch.float64
    for i, seed in enumerate((7, 8, 9)):
        expected = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(noise[i], expected.double())
    with pytest.raises(ValueError, match="one generator per image"):
        per_image_noise(x, gens(1, 2))
    assert per_image_noise(x, torch.Generator().manual_seed(0)).shape == x.shape


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batch_size_independence_and_determinism(sampler: str) -> None:
    config = DiffusionConfig(var_type="learned_range")
    sch = make_schedule(config, "20")
    model_fn = toy_model(6)
    x_T = torch.cat([torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(100 + i)) for i in range(4)])

    def run(index: list[int], seeds: list[int]) -> torch.Tensor:
        d = denoiser(model_fn, sch, config)
        if sampler == "ddpm":
            return sample_ddpm(d, x_T[index], generators=gens(*seeds))
        return sample_ddim(d, x_T[index], eta=0.8, generators=gens(*seeds))

    batch = run([0, 1, 2, 3], [0, 1, 2, 3])
    torch.testing.assert_close(run([0, 1, 2, 3], [0, 1, 2, 3]), batch, rtol=0, atol=0)
    pair = run([2, 3], [2, 3])
    single = run([1], [1])
    torch.testing.assert_close(pair, batch[2:], rtol=0, atol=1e-6)
    torch.testing.assert_close(single, batch[1:2], rtol=0, atol=1e-6)
    assert (run([1], [5]) - single).abs().max().item() > 1e-3


def test_ddim_eta0_is_deterministic_without_generators() -> None:
    config = DiffusionConfig()
    sch = make_schedule(config, "ddim10")
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    d = denoiser(toy_model(), sch, config)
    a = sample_ddim(d, x_T)
    b = sample_ddim(d, x_T, generators=gens(1, 2, 3, 4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs generators"):
        sample_ddim(d, x_T, eta=0.5)
    with pytest.raises(ValueError, match="score guidance"):
        sample_ddim(denoiser(toy_model(), sch, config, cond_fn=lambda x, t: x, mode="mean"), x_T)


@pytest.mark.parametrize(("kind", "spec"), [("linear", "ddim50"), ("cosine", None)])
def test_ddim_invert_then_sample_reconstructs(kind: str, spec: str | None) -> None:
    """With a network whose ε is exact along the path (a fixed ε*), DDIM is exact both ways."""
    config = DiffusionConfig(schedule=kind)
    sch = make_schedule(config, spec)
    g = torch.Generator().manual_seed(3)
    x0 = (torch.rand(SHAPE, generator=g, dtype=torch.float64) * 1.8 - 0.9)
    eps_star = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    model_fn = lambda x, model_t: eps_star  # noqa: E731
    d = denoiser(model_fn, sch, config, clip_denoised=False)
    x_T = ddim_invert(d, x0)
    last = torch.full((4,), sch.num_steps - 1)
    torch.testing.assert_close(x_T, q_sample(x0, last, eps_star, schedule=sch), rtol=1e-9, atol=1e-9)
    recon = sample_ddim(d, x_T)
    torch.testing.assert_close(recon, x0, rtol=1e-9, atol=1e-9)


def test_callback_and_progress() -> None:
    config = DiffusionConfig()
    sch = make_schedule(config, "5")
    seen: list[tuple[int, list[int], tuple[int, ...]]] = []
    done: list[tuple[int, int]] = []
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    final = sample_ddpm(
        denoiser(toy_model(), sch, config), x_T, generators=gens(0, 1),
        callback=lambda i, t, x, out: seen.append((i, t.tolist(), tuple(out.x0_pred.shape))),
        progress=lambda i, n: done.append((i, n)),
    )
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert [s[1] for s in seen] == [[4, 4], [3, 3], [2, 2], [1, 1], [0, 0]]
    assert done == [(i, 5) for i in range(1, 6)]
    assert final.shape == x_T.shape


def test_model_sees_respaced_and_rescaled_timesteps() -> None:
    config = DiffusionConfig(steps=500, rescale_timesteps=True)
    sch = make_schedule(config, "ddim5")
    seen: list[list[float]] = []

    def model_fn(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        seen.append(model_t.tolist())
        return torch.zeros_like(x)

    sample_ddim(denoiser(model_fn, sch, config), torch.zeros(1, 3, 2, 2))
    assert seen == [[800.0], [600.0], [400.0], [200.0], [0.0]]


def test_condition_mean_and_score() -> None:
    config = DiffusionConfig(schedule="cosine")
    sch = make_schedule(config, "50")
    g = torch.Generator().manual_seed(5)
    x_t, eps, grad = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 3, 25, 49])
    out = p_mean_variance(eps, x_t, t, schedule=sch, config=config, clip_denoised=False)
    shifted = condition_mean(grad, out)
    torch.testing.assert_close(shifted.mean, out.mean + out.var * grad)
    assert shifted.x0_pred is out.x0_pred
    scored = condition_score(grad, out, x_t, t, schedule=sch)
    sqrt_1m_ab = torch.sqrt(1 - sch.alpha_bar[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(scored.eps_pred, eps - sqrt_1m_ab * grad)
    expected = p_mean_variance(eps - sqrt_1m_ab * grad, x_t, t, schedule=sch, config=config, clip_denoised=False)
    torch.testing.assert_close(scored.mean, expected.mean)
    torch.testing.assert_close(scored.x0_pred, expected.x0_pred)
    zero = condition_score(torch.zeros_like(grad), out, x_t, t, schedule=sch)
    torch.testing.assert_close(zero.mean, out.mean)


def test_classifier_grad_matches_softmax_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(12, 5)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(5, 12, generator=g))
        linear.bias.copy_(torch.randn(5, generator=g))
    classifier_fn = lambda x, t: linear(x.flatten(1)) + t.float().view(-1, 1) * 0  # noqa: E731
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 4, 2])
    with torch.no_grad():  # sampling loops run without grad; the gradient must still flow
        grad = classifier_grad(classifier_fn, x, torch.tensor([1, 2, 3]), y, 2.5)
    probs = torch.softmax(linear(x.flatten(1)), dim=-1).detach()
    w = linear.weight.detach()
    expected = 2.5 * (w[y] - probs @ w).view_as(x)  # ∇ log softmax_y = w_y - Σ_k p_k w_k
    torch.testing.assert_close(grad, expected)
    assert linear.weight.grad is None and not grad.requires_grad


def test_classifier_free_convention() -> None:
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(classifier_free(cond, uncond, 0.0), cond)
    torch.testing.assert_close(classifier_free(cond, uncond, 3.0), 4 * cond - 3 * uncond)


def test_guided_ddpm_uses_mean_shift() -> None:
    """With guidance="mean" each step's mean moves by Σ·grad (ADM Alg. 1)."""
    config = DiffusionConfig()
    sch = make_schedule(config, "3")
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    means: dict[str, list[PMeanVar]] = {"plain": [], "guided": []}
    for key, cond in (("plain", None), ("guided", lambda x, t: torch.ones_like(x))):
        sample_ddpm(
            denoiser(toy_model(), sch, config, cond_fn=cond, mode="mean"), x_T, generators=gens(0, 1),
            callback=lambda i, t, x, out, k=key: means[k].append(out),
        )
    first_plain, first_guided = means["plain"][0], means["guided"][0]
    torch.testing.assert_close(first_guided.mean, first_plain.mean + first_plain.var)
