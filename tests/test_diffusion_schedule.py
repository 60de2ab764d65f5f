"""Schedules and respacing: closed forms and consistency."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import (
    Schedule,
    cosine_betas,
    linear_betas,
    make_schedule,
    model_timesteps,
    respace,
    space_timesteps,
)

TABLES = (
    "betas",
    "alpha_bar",
    "alpha_bar_prev",
    "alpha_bar_next",
    "posterior_var",
    "posterior_log_var_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def test_linear_betas_endpoints() -> None:
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    short = linear_betas(250)  # scaled by 1000 / 250
    assert short[0].item() == pytest.approx(4e-4, rel=1e-12)
    assert short[-1].item() == pytest.approx(0.08, rel=1e-12)
    assert bool((betas[1:] > betas[:-1]).all())
    with pytest.raises(ValueError, match="at least 20 steps"):
        linear_betas(19)


def test_cosine_alpha_bar_formula() -> None:
    steps, s = 1000, 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = torch.cumprod(1 - cosine_betas(steps), dim=0)
    expected = torch.tensor([f((t + 1) / steps) / f(0) for t in range(steps)], dtype=torch.float64)
    # The last β is clipped to 0.999 (ᾱ(1) = 0), every other ᾱ_t follows IDDPM Eq. 17.
    torch.testing.assert_close(alpha_bar[:-1], expected[:-1], rtol=1e-10, atol=1e-14)
    assert cosine_betas(steps)[-1].item() == 0.999
    assert float(cosine_betas(steps, max_beta=0.5).max()) == 0.5


def test_posterior_variance_closed_form() -> None:
    sch = make_schedule(DiffusionConfig(schedule="cosine"))
    beta, ab, ab_prev = sch.betas, sch.alpha_bar, sch.alpha_bar_prev
    # β̃_t from Bayes: precision 1/(1 - ᾱ_{t-1}) + α_t/β_t of q(x_{t-1} | x_t, x_0).
    bayes = 1.0 / (1.0 / (1.0 - ab_prev[1:]) + (1.0 - beta[1:]) / beta[1:])
    torch.testing.assert_close(sch.posterior_var[1:], bayes, rtol=1e-9, atol=0)
    torch.testing.assert_close(sch.posterior_var, beta * (1 - ab_prev) / (1 - ab), rtol=1e-14, atol=0)
    assert sch.posterior_var[0].item() == 0.0
    assert sch.posterior_log_var_clipped[0].item() == pytest.approx(math.log(sch.posterior_var[1].item()))
    # μ̃_t coefficients from Bayes: β̃_t (√ᾱ_{t-1}/(1 - ᾱ_{t-1}) x_0 + √α_t/β_t x_t).
    coef1 = bayes * torch.sqrt(ab_prev[1:]) / (1 - ab_prev[1:])
    coef2 = bayes * torch.sqrt(1 - beta[1:]) / beta[1:]
    torch.testing.assert_close(sch.posterior_mean_coef1[1:], coef1, rtol=1e-9, atol=0)
    torch.testing.assert_close(sch.posterior_mean_coef2[1:], coef2, rtol=1e-9, atol=0)


def test_tables_are_float64_and_identity_timesteps() -> None:
    sch = make_schedule(DiffusionConfig(steps=100))
    for name in TABLES:
        assert getattr(sch, name).dtype == torch.float64, name
    assert sch.timesteps.tolist() == list(range(100))
    assert sch.num_steps == sch.original_steps == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        sch.original_steps = 5  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_full_length_respacing_is_the_base_schedule(kind: str) -> None:
    base = make_schedule(DiffusionConfig(schedule=kind))
    same = respace(base, range(1000))
    for name in TABLES:
        torch.testing.assert_close(getattr(same, name), getattr(base, name), rtol=1e-9, atol=1e-15, msg=name)
    assert torch.equal(same.timesteps, base.timesteps)
    assert make_schedule(DiffusionConfig(schedule=kind), "1000").timesteps.tolist() == list(range(1000))


def test_ddim25_respacing_strides_40_and_keeps_alpha_bar() -> None:
    base = make_schedule(DiffusionConfig())
    sch = make_schedule(DiffusionConfig(), "ddim25")
    assert sch.timesteps.tolist() == list(range(0, 1000, 40))
    assert sch.num_steps == 25 and sch.original_steps == 1000
    torch.testing.assert_close(sch.alpha_bar, base.alpha_bar[sch.timesteps], rtol=1e-12, atol=0)
    # Respacing a respaced schedule composes the timestep maps.
    again = respace(sch, [0, 5, 24])
    assert again.timesteps.tolist() == [0, 200, 960]
    torch.testing.assert_close(again.alpha_bar, base.alpha_bar[again.timesteps], rtol=1e-12, atol=0)


def test_section_counts() -> None:
    steps = space_timesteps(1000, "90,60,60,20,20")
    assert len(steps) == 250 and list(steps) == sorted(steps)
    sections = [sum(1 for s in steps if 200 * i <= s < 200 * (i + 1)) for i in range(5)]
    assert sections == [90, 60, 60, 20, 20]
    assert steps[0] == 0 and 199 in steps and 999 in steps
    # guided-diffusion's docstring example: 300 steps, [10, 15, 20] over sections of 100.
    example = space_timesteps(300, [10, 15, 20])
    assert [sum(1 for s in example if 100 * i <= s < 100 * (i + 1)) for i in range(3)] == [10, 15, 20]
    assert space_timesteps(1000, 250) == space_timesteps(1000, "250")
    assert space_timesteps(10, "") == tuple(range(10))
    assert space_timesteps(10, "1") == (0,)
    assert space_timesteps(1000, "ddim1000") == tuple(range(1000))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ddim999", "999"),  # no integer stride gives 999 of 1000 steps
        ("ddim0", "positive"),
        ("ddimx", "ddimN"),
        ("10,0", "positive"),
        ("-5", "positive"),
        ("1001", "1001"),
        ("600,500", "1100"),
        ("600,10", "600 steps from section 0 of 500"),
        ("abc", "cannot parse"),
        ([], "at least one"),
    ],
)
def test_space_timesteps_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        space_timesteps(1000, spec)


def test_model_timesteps() -> None:
    sch = make_schedule(DiffusionConfig(steps=500), "ddim50")
    t = torch.tensor([0, 1, 49])
    plain = model_timesteps(sch, t, rescale=False)
    assert plain.dtype == torch.int64 and plain.tolist() == [0, 10, 490]
    assert model_timesteps(sch, t, rescale=True).tolist() == [0.0, 20.0, 980.0]


def test_from_betas_validates() -> None:
    with pytest.raises(ValueError, match="1-D"):
        Schedule.from_betas(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Schedule.from_betas([0.1, 0.0])
    with pytest.raises(ValueError, match="one timestep per beta"):
        Schedule.from_betas([0.1, 0.2], [0])
    one = Schedule.from_betas([0.5])  # a one-step process has no β̃_1 to clip to
    assert torch.isfinite(one.posterior_log_var_clipped).all()
    with pytest.raises(ValueError, match="timesteps must lie"):
        respace(one, [1])
