"""Training building blocks against closed forms: objectives, timestep samplers, LR, EMA, loss scaling."""

from __future__ import annotations

import math

import pytest
import torch

from adm_cli.config import DiffusionConfig, TrainConfig
from adm_cli.diffusion import make_schedule, q_sample
from adm_cli.train.objectives import classifier_terms, diffusion_terms
from adm_cli.train.optim import LossScaler, ema_rate_at, learning_rate, update_ema
from adm_cli.train.timesteps import LossSecondMomentSampler, UniformSampler


def _batch(config: DiffusionConfig, seed: int = 0, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((4, channels, 4, 4), generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, config.steps // 2, config.steps - 1])
    schedule = make_schedule(config, None)
    return x0, noise, t, schedule, q_sample(x0, t, noise, schedule=schedule)


def test_simple_loss_is_eps_mse():
    config = DiffusionConfig(steps=100)
    x0, noise, t, schedule, x_t = _batch(config)
    out = noise + 0.5
    terms = diffusion_terms(out, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="simple")
    torch.testing.assert_close(terms["loss"], torch.full((4,), 0.25))
    assert "vb" not in terms


def test_x0_prediction_targets_x0():
    config = DiffusionConfig(steps=100, mean_type="x0")
    x0, noise, t, schedule, x_t = _batch(config)
    terms = diffusion_terms(x0.clone(), x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="simple")
    assert float(terms["loss"].abs().max()) == 0.0


def test_hybrid_vb_trains_only_the_variance():
    """Stop-gradient on the mean: d loss / d mean-part equals d mse / d mean-part exactly."""
    config = DiffusionConfig(steps=100, var_type="learned_range")
    x0, noise, t, schedule, x_t = _batch(config)
    out = torch.randn((4, 6, 4, 4), generator=torch.Generator().manual_seed(3)).requires_grad_()
    terms = diffusion_terms(out, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="hybrid")
    terms["loss"].sum().backward()
    mean_grad = 2 * (out[:, :3] - noise) / (3 * 4 * 4)
    torch.testing.assert_close(out.grad[:, :3], mean_grad.detach())
    assert out.grad[:, 3:].abs().sum() > 0  # the variance does learn from L_vlb
    # λ·T = T/1000 scales the VLB term: 0.1 at T = 100.
    kl = diffusion_terms(out.detach(), x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="kl")
    torch.testing.assert_close(terms["vb"].detach(), kl["vb"] * 0.1)


def test_hybrid_needs_learned_variance():
    config = DiffusionConfig(steps=20)
    x0, noise, t, schedule, x_t = _batch(config)
    with pytest.raises(ValueError, match="learned variance"):
        diffusion_terms(noise, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="hybrid")


def test_classifier_terms():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0, -1], [0.0, 1, 2, 3, 4, 5, 6]])
    terms = classifier_terms(logits, torch.tensor([0, 0]))
    assert terms["acc@1"].tolist() == [1.0, 0.0]
    assert terms["acc@5"].tolist() == [1.0, 0.0]  # class 0 is 7th of 7 in the second row
    torch.testing.assert_close(terms["loss"][0], -torch.log_softmax(logits[0], 0)[0])


def test_uniform_sampler_covers_all_steps():
    t, w = UniformSampler(10).sample(2000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(10)) and bool((w == 1).all())


def test_loss_second_moment_sampler_is_unbiased_and_resumable():
    T = 8
    sampler = LossSecondMomentSampler(T, history=3)
    assert torch.allclose(sampler.weights(), torch.full((T,), 1 / T, dtype=torch.float64))
    for rep in range(3):
        sampler.update(torch.arange(T), torch.arange(T, dtype=torch.float64) + 1 + rep)
    assert sampler.warmed_up
    p = sampler.weights()
    expected = torch.sqrt(((torch.arange(T) + 1.0)[:, None] + torch.arange(3.0)) ** 2).pow(2).mean(1).sqrt()
    expected = expected / expected.sum() * (1 - 0.001) + 0.001 / T
    torch.testing.assert_close(p, expected.double())
    # Importance weights make E_p[w f(t)] the uniform mean of f.
    t, w = sampler.sample(200_000, torch.Generator().manual_seed(1))
    f = (t.double() + 1) ** 2
    assert abs(float((w.double() * f).mean()) / float(((torch.arange(T) + 1.0) ** 2).mean()) - 1) < 0.02
    clone = LossSecondMomentSampler(T, history=3)
    clone.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(clone.weights(), p)


def test_learning_rate_schedules():
    const = TrainConfig(lr=1.0, warmup_steps=4)
    assert [learning_rate(s, const) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    lin = TrainConfig(lr=1.0, lr_schedule="linear", anneal_steps=10)
    assert learning_rate(0, lin) == 1.0 and learning_rate(5, lin) == 0.5 and learning_rate(10, lin) == 0.0
    cos = TrainConfig(lr=1.0, lr_schedule="cosine", anneal_steps=10)
    assert math.isclose(learning_rate(5, cos), 0.5) and learning_rate(10, cos) < 1e-12


def test_ema():
    ema, params = [torch.zeros(3)], [torch.ones(3)]
    update_ema(ema, params, 0.9)
    torch.testing.assert_close(ema[0], torch.full((3,), 0.1))
    assert ema_rate_at(0.9999, 0, warmup=True) == 0.1
    assert ema_rate_at(0.9999, 10**7, warmup=True) == 0.9999
    assert ema_rate_at(0.9999, 0, warmup=False) == 0.9999


def test_loss_scaler_backs_off_and_grows():
    scaler = LossScaler(True, init_scale=1024.0, growth_interval=2)
    scaler.update(False)
    assert scaler.scale == 512.0
    scaler.update(True)
    scaler.update(True)
    assert scaler.scale == 1024.0
    restored = LossScaler(True)
    restored.load_state_dict(scaler.state_dict())
    assert restored.scale == 1024.0
    off = LossScaler(False)
    off.update(False)
    assert off.scale == 1.0


def test_train_config_validation():
    from adm_cli.config import ConfigError

    with pytest.raises(ConfigError, match="anneal"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ConfigError, match="EMA"):
        TrainConfig(ema_rates=(1.5,))
    assert TrainConfig.from_dict(TrainConfig(ema_rates=(0.9, 0.99)).to_dict()).ema_rates == (0.9, 0.99)
