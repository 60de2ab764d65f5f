"""q, the posterior, p_mean_variance and the likelihood terms: closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import (
    discretized_gaussian_log_likelihood,
    gather,
    make_schedule,
    normal_kl,
    p_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    prior_bpd,
    q_posterior,
    q_sample,
    vlb_terms,
)

SHAPE = (4, 3, 5, 5)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gather_shape_dtype() -> None:
    table = torch.arange(10, dtype=torch.float64) / 3
    out = gather(table, torch.tensor([0, 9, 3]), 4)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 3.0, 1.0])
    assert gather(table, torch.tensor([1]), 2, dtype=torch.float64).dtype == torch.float64


def test_q_sample_moments() -> None:
    sch = make_schedule(DiffusionConfig())
    n, t_step = 200_000, 300
    x0 = torch.full((n, 1), 0.7)
    t = torch.full((n,), t_step)
    x_t = q_sample(x0, t, torch.randn(n, 1, generator=_gen()), schedule=sch)
    ab = sch.alpha_bar[t_step].item()
    # 5 standard errors of the sample mean / variance.
    assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=5 * math.sqrt((1 - ab) / n))
    assert x_t.var().item() == pytest.approx(1 - ab, abs=5 * (1 - ab) * math.sqrt(2 / n))


def test_x0_eps_roundtrip_and_posterior() -> None:
    sch = make_schedule(DiffusionConfig(schedule="cosine"), "ddim50")
    g = _gen(1)
    x0, eps = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 25, 49])
    x_t = q_sample(x0, t, eps, schedule=sch)
    torch.testing.assert_close(predict_x0_from_eps(x_t, t, eps, schedule=sch), x0)
    torch.testing.assert_close(predict_eps_from_x0(x_t, t, x0, schedule=sch), eps)
    mean, var, log_var = q_posterior(x0, x_t, t, schedule=sch)
    assert mean.shape == var.shape == log_var.shape == SHAPE
    # At t = 0 the posterior is a point mass on x_0.
    torch.testing.assert_close(mean[0], x0[0])
    assert var[0].abs().max().item() == 0.0


def test_epsilon_and_x0_parameterisations_agree() -> None:
    sch = make_schedule(DiffusionConfig(), "100")
    g = _gen(2)
    x0 = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99])
    x_t = q_sample(x0, t, eps, schedule=sch)
    by_eps = p_mean_variance(eps, x_t, t, schedule=sch, config=DiffusionConfig(mean_type="epsilon"))
    by_x0 = p_mean_variance(x0, x_t, t, schedule=sch, config=DiffusionConfig(mean_type="x0"))
    for a, b in zip(by_eps, by_x0):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(by_eps.mean, q_posterior(x0, x_t, t, schedule=sch)[0])
    torch.testing.assert_close(by_eps.eps_pred, eps)


def test_variance_types() -> None:
    sch = make_schedule(DiffusionConfig())
    t = torch.tensor([0, 1, 500, 999])
    x_t = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    eps = torch.zeros_like(x_t)
    small = p_mean_variance(eps, x_t, t, schedule=sch, config=DiffusionConfig(var_type="fixed_small"))
    torch.testing.assert_close(small.var.flatten(), sch.posterior_var[t])
    large = p_mean_variance(eps, x_t, t, schedule=sch, config=DiffusionConfig(var_type="fixed_large"))
    # guided-diffusion's fixed_large uses β̃_1 instead of β_0 at t = 0.
    torch.testing.assert_close(large.var.flatten(), torch.stack([sch.posterior_var[1], *sch.betas[t[1:]]]))
    config = DiffusionConfig(var_type="learned_range")
    for v, expected in ((-1.0, sch.posterior_log_var_clipped[t]), (1.0, torch.log(sch.betas[t]))):
        out = p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), x_t, t, schedule=sch, config=config)
        torch.testing.assert_close(out.log_var.flatten(), expected)
        torch.testing.assert_close(out.var, out.log_var.exp())
    output = torch.cat([eps, torch.full_like(eps, -3.0)], 1)
    learned = p_mean_variance(output, x_t, t, schedule=sch, config=DiffusionConfig(var_type="learned"))
    assert learned.log_var.flatten().tolist() == [-3.0] * 4


def test_p_mean_variance_checks_shapes_and_clips() -> None:
    sch = make_schedule(DiffusionConfig(steps=50))
    x_t = torch.randn(SHAPE, generator=_gen(3))
    t = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="learned variance"):
        p_mean_variance(x_t, x_t, t, schedule=sch, config=DiffusionConfig(steps=50, var_type="learned_range"))
    with pytest.raises(ValueError, match="must match"):
        p_mean_variance(torch.cat([x_t, x_t], 1), x_t, t, schedule=sch, config=DiffusionConfig(steps=50))
    with pytest.raises(ValueError, match="t must have shape"):
        p_mean_variance(x_t, x_t, t[:2], schedule=sch, config=DiffusionConfig(steps=50))
    config = DiffusionConfig(steps=50, mean_type="x0")
    out = p_mean_variance(5 * x_t, x_t, t, schedule=sch, config=config, denoised_fn=lambda x: x + 10)
    assert out.x0_pred.min().item() >= -1 and out.x0_pred.max().item() == 1.0
    assert p_mean_variance(5 * x_t, x_t, t, schedule=sch, config=config, clip_denoised=False).x0_pred.abs().max() > 1


def test_normal_kl_closed_form() -> None:
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 2.0])
    lv1, lv2 = torch.tensor([0.1, -2.0]), torch.tensor([0.5, 1.0])
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))
    assert normal_kl(m1, lv1, m1, lv1).abs().max().item() < 1e-7
    assert normal_kl(m1, 0.0, 0.0, 0.0).tolist() == pytest.approx((0.5 * m1**2).tolist())


def test_discretized_likelihood_sums_to_one() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # every 8-bit value
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.0), (0.0, 0.5)):
        logp = discretized_gaussian_log_likelihood(
            levels, means=torch.full_like(levels, mean), log_scales=torch.full_like(levels, log_scale)
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_vlb_terms_and_prior() -> None:
    config = DiffusionConfig(var_type="learned_range")
    sch = make_schedule(config, "50")
    g = _gen(4)
    x0 = torch.randint(0, 256, SHAPE, generator=g).double() / 127.5 - 1
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 20, 49])
    x_t = q_sample(x0, t, eps, schedule=sch)
    # The true ε with the true posterior variance makes every KL term vanish.
    output = torch.cat([eps, torch.full_like(eps, -1.0)], dim=1)  # v = -1 -> β̃_t
    out = p_mean_variance(output, x_t, t, schedule=sch, config=config, clip_denoised=False)
    terms = vlb_terms(out, x0, x_t, t, schedule=sch)
    assert terms.shape == (4,)
    assert terms[1:].abs().max().item() < 1e-9
    assert terms[0].item() > 0  # the decoder NLL at t = 0
    prior = prior_bpd(x0, schedule=sch)
    assert prior.shape == (4,) and 0 <= prior.max().item() < 1e-4
