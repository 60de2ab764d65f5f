"""Objectives beyond ADM: v-prediction, Min-SNR-γ and P2 weighting, input perturbation (DDPM-IP).

Golden values: assets/golden/objectives/values.json, made by make_golden.py there from the authors'
own `training_losses` (Min-SNR-Diffusion-Training, P2-weighting, DDPM-IP; provenance in the README
there), compared to 1e-6 relative. Closed forms: the v ↔ ε ↔ x_0 conversions, the weights at known
SNRs, Min-SNR-γ as one x_0-space loss whatever the network predicts, every option off = the ADM loss.
Consistency: a v-model samples exactly as the ε-model it was converted from, with every sampler and
both guidances. The CLI: a v-prediction run samples; bad options exit 2 and leave no run directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.config import ConfigError, DiffusionConfig, ModelSpec, TrainConfig, UNetConfig
from adm_cli.diffusion import (
    Denoiser,
    make_schedule,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_sample,
    q_velocity,
)
from adm_cli.generate import SAMPLERS, sample_images
from adm_cli.train.diffusion import DiffusionTask
from adm_cli.train.objectives import diffusion_terms, input_perturbed_noise
from adm_cli.train.weighting import min_snr_weight, mse_weight, p2_weight, snr
from tests.conftest import TINY_UNET, write_unet
from tests.test_train_loop import assert_same_state
from tests.cli_helpers import DATA, TINY, adm, adm_fails

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden" / "objectives" / "values.json"
GOLDEN_RTOL = 1e-6


# ---------------------------------------------------------------- golden values (the authors' code)

def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _draw(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _network(out_channels: int, in_channels: int, seed: int):
    """make_golden.py `network`: a seeded 3x3 convolution of x_t plus 0.002 t."""
    g = torch.Generator().manual_seed(seed)
    weight = 0.2 * torch.randn((out_channels, in_channels, 3, 3), generator=g)
    bias = 0.1 * torch.randn((out_channels,), generator=g)
    return lambda x, t: torch.nn.functional.conv2d(x, weight, bias, padding=1) + 0.002 * t.float().reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("case", list(_golden()["cases"]))
def test_matches_the_authors_training_losses(case: str) -> None:
    golden = _golden()
    spec, values = golden["inputs"], golden["cases"][case]
    shape, seeds = tuple(spec["shape"]), spec["seeds"]
    config = DiffusionConfig(steps=spec["steps"], schedule=values["schedule"], mean_type=values["mean_type"],
                             var_type=values["var_type"])
    train = TrainConfig(loss=values["our_loss"], **values["our_options"])
    schedule = make_schedule(config, None)
    x0, noise, t = _draw(seeds["x0"], shape).clamp(-1, 1), _draw(seeds["noise"], shape), torch.tensor(spec["t"])
    noised_with = noise
    if train.input_perturbation > 0:
        noised_with = input_perturbed_noise(noise, _draw(seeds["xi"], shape), train.input_perturbation)
    x_t = q_sample(x0, t, noised_with, schedule=schedule)
    channels = shape[1] * (2 if config.learned_variance else 1)
    out = _network(channels, shape[1], seeds["weight"])(x_t, t)
    terms = diffusion_terms(
        out, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss=train.loss,
        min_snr_gamma=train.min_snr_gamma, p2_gamma=train.p2_gamma, p2_k=train.p2_k,
    )
    for key in ("loss", "mse", "vb"):
        if key in values:
            np.testing.assert_allclose(terms[key].double().numpy(), values[key], rtol=GOLDEN_RTOL, atol=1e-12, err_msg=key)


def test_golden_cover_every_objective() -> None:
    cases = _golden()["cases"].values()
    assert {c["mean_type"] for c in cases} == {"epsilon", "x0", "v"}
    assert {c["repository"] for c in cases} == {"min-snr", "p2", "ip"}
    assert any(c["our_loss"] == "hybrid" for c in cases if c["repository"] == "ip")


# ---------------------------------------------------------------- closed forms

def _process(schedule_name: str = "cosine", steps: int = 50):
    config = DiffusionConfig(steps=steps, schedule=schedule_name)
    schedule = make_schedule(config, None)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 3, 5, 5), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn((4, 3, 5, 5), generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, steps // 2, steps - 1])
    return schedule, x0, eps, t, q_sample(x0, t, eps, schedule=schedule)


def test_v_epsilon_x0_round_trips() -> None:
    """v = α ε − σ x_0; x̂_0 = α x_t − σ v; ε̂ = σ x_t + α v; and back through ε (Salimans & Ho 2022)."""
    schedule, x0, eps, t, x_t = _process()
    v = q_velocity(x0, t, eps, schedule=schedule)
    alpha = schedule.alpha_bar[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - schedule.alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, alpha * eps - sigma * x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(predict_x0_from_v(x_t, t, v, schedule=schedule), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(predict_eps_from_v(x_t, t, v, schedule=schedule), eps, rtol=1e-10, atol=1e-10)
    x0_back = predict_x0_from_eps(x_t, t, predict_eps_from_v(x_t, t, v, schedule=schedule), schedule=schedule)
    torch.testing.assert_close(x0_back, x0, rtol=1e-8, atol=1e-8)
    v_back = q_velocity(predict_x0_from_eps(x_t, t, eps, schedule=schedule), t, eps, schedule=schedule)
    torch.testing.assert_close(v_back, v, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(predict_eps_from_x0(x_t, t, x0, schedule=schedule), eps, rtol=1e-8, atol=1e-8)


def test_weights_at_known_snr() -> None:
    s = torch.tensor([0.25, 1.0, 5.0, 20.0], dtype=torch.float64)
    close = lambda a, b: torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float64), rtol=1e-14, atol=0)  # noqa: E731
    close(min_snr_weight(s, 5.0, "epsilon"), [1.0, 1.0, 1.0, 0.25])
    close(min_snr_weight(s, 5.0, "x0"), [0.25, 1.0, 5.0, 5.0])
    close(min_snr_weight(s, 5.0, "v"), [0.2, 0.5, 5.0 / 6.0, 5.0 / 21.0])
    close(min_snr_weight(torch.tensor([0.0], dtype=torch.float64), 5.0, "epsilon"), [1.0])  # SNR 0: weight 1, as theirs
    close(p2_weight(s, 1.0, 1.0), [0.8, 0.5, 1.0 / 6.0, 1.0 / 21.0])
    close(p2_weight(s, 0.5, 2.0), [(2.25) ** -0.5, 3.0 ** -0.5, 7.0 ** -0.5, 22.0 ** -0.5])
    close(p2_weight(s, 0.0, 1.0), [1.0] * 4)
    ab = torch.tensor([0.5, 0.8], dtype=torch.float64)
    close(snr(ab), [1.0, 4.0])


def test_min_snr_is_one_x0_loss_whatever_the_network_predicts() -> None:
    """The same x̂_0 as ε, x_0 or v output: each Min-SNR-weighted MSE = min(SNR_t, γ) ‖x_0 − x̂_0‖²."""
    schedule, x0, eps, t, x_t = _process("linear", 100)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps_hat = predict_eps_from_x0(x_t, t, x0_hat, schedule=schedule)
    outputs = {"epsilon": eps_hat, "x0": x0_hat, "v": q_velocity(x0_hat, t, eps_hat, schedule=schedule)}
    expected = torch.clamp(snr(schedule.alpha_bar[t]), max=5.0) * ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3))
    for mean_type, out in outputs.items():
        config = DiffusionConfig(steps=100, schedule="linear", mean_type=mean_type)
        terms = diffusion_terms(out, x0=x0, x_t=x_t, t=t, noise=eps, schedule=schedule, config=config,
                                loss="simple", min_snr_gamma=5.0)
        torch.testing.assert_close(terms["mse"].double(), expected.float().double(), rtol=1e-5, atol=1e-9, msg=mean_type)


@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_options_off_give_the_adm_loss_exactly(var_type: str) -> None:
    schedule, x0, eps, t, x_t = _process()
    config = DiffusionConfig(steps=50, schedule="cosine", var_type=var_type)
    out = torch.randn((4, 6 if config.learned_variance else 3, 5, 5), generator=torch.Generator().manual_seed(2))
    loss = "hybrid" if config.learned_variance else "simple"
    args = dict(x0=x0.float(), x_t=x_t.float(), t=t, noise=eps.float(), schedule=schedule, config=config, loss=loss)
    plain = diffusion_terms(out, **args)
    off = diffusion_terms(out, **args, min_snr_gamma=None, p2_gamma=0.0, p2_k=3.0)
    for key in plain:
        assert torch.equal(plain[key], off[key]), key
    assert mse_weight(schedule, t, mean_type="epsilon") is None
    assert torch.equal(input_perturbed_noise(eps, torch.ones_like(eps), 0.0), eps)


def test_hybrid_vb_term_is_not_weighted() -> None:
    schedule, x0, eps, t, x_t = _process()
    config = DiffusionConfig(steps=50, schedule="cosine", var_type="learned_range", mean_type="v")
    out = torch.randn((4, 6, 5, 5), generator=torch.Generator().manual_seed(3))
    args = dict(x0=x0.float(), x_t=x_t.float(), t=t, noise=eps.float(), schedule=schedule, config=config, loss="hybrid")
    plain, weighted = diffusion_terms(out, **args), diffusion_terms(out, **args, min_snr_gamma=1.0)
    assert torch.equal(plain["vb"], weighted["vb"])
    weight = min_snr_weight(snr(schedule.alpha_bar[t]), 1.0, "v").float()
    torch.testing.assert_close(weighted["mse"], weight * plain["mse"])


# ---------------------------------------------------------------- training inputs (DDPM-IP)

def _task(**train) -> DiffusionTask:
    unet = UNetConfig(image_size=8, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=(),
                      channel_mult=(1.0,), num_classes=4, null_class=True)
    spec = ModelSpec(unet, DiffusionConfig(steps=20))
    return DiffusionTask(spec, TrainConfig(batch_size=4, **train), make_backend("cpu", "fp32"))


def test_input_perturbation_draws_xi_last_from_the_step_generator() -> None:
    x0 = torch.rand((4, 3, 8, 8)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    plain_task, ip_task = _task(label_dropout=0.2), _task(label_dropout=0.2, input_perturbation=0.1)
    g_plain, g_ip = gen(), gen()
    plain = plain_task.inputs(x0, labels, generator=g_plain, global_batch=4, part=slice(0, 4))
    ip = ip_task.inputs(x0, labels, generator=g_ip, global_batch=4, part=slice(0, 4))
    for key in ("t", "noise", "weight", "y"):  # the same draws before ξ: label dropout keeps its pattern
        assert torch.equal(plain[key], ip[key]), key
    xi = torch.randn((4, 3, 8, 8), generator=g_plain)  # ξ is the next draw of the step's generator
    assert torch.equal(ip["x_t"], q_sample(x0, ip["t"], ip["noise"] + 0.1 * xi, schedule=ip_task.schedule))
    assert torch.equal(plain["x_t"], q_sample(x0, plain["t"], plain["noise"], schedule=plain_task.schedule))
    assert torch.equal(torch.randn(3, generator=g_plain), torch.randn(3, generator=g_ip))  # streams in step after


def test_input_perturbation_slices_the_global_draw() -> None:
    """Two processes' halves of the global batch = one process's whole batch (torchrun, resume)."""
    task = _task(input_perturbation=0.1)
    x0 = torch.rand((4, 3, 8, 8)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    whole = task.inputs(x0, labels, generator=torch.Generator().manual_seed(5), global_batch=4, part=slice(0, 4))
    halves = [task.inputs(x0[p], labels[p], generator=torch.Generator().manual_seed(5), global_batch=4, part=p)
              for p in (slice(0, 2), slice(2, 4))]
    for key in ("x_t", "noise", "t"):
        assert torch.equal(whole[key], torch.cat([h[key] for h in halves])), key


# ---------------------------------------------------------------- configs

def test_train_config_validation_and_old_dicts() -> None:
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("min_snr_gamma", "p2_gamma", "p2_k", "input_perturbation")}
    loaded = TrainConfig.from_dict(old)
    assert (loaded.min_snr_gamma, loaded.p2_gamma, loaded.p2_k, loaded.input_perturbation) == (None, 0.0, 1.0, 0.0)
    assert TrainConfig.from_dict(TrainConfig(min_snr_gamma=5.0).to_dict()).min_snr_gamma == 5.0
    assert DiffusionConfig.from_dict({**DiffusionConfig().to_dict(), "mean_type": "v"}).mean_type == "v"
    for bad, match in [
        (dict(min_snr_gamma=5.0, p2_gamma=1.0), "choose one"),
        (dict(min_snr_gamma=5.0, loss="kl"), "kl"),
        (dict(p2_gamma=1.0, loss="kl"), "kl"),
        (dict(min_snr_gamma=-1.0), "positive"),
        (dict(min_snr_gamma=0.0), "positive"),
        (dict(p2_gamma=-0.5), ">= 0"),
        (dict(p2_k=-1.0), ">= 0"),
        (dict(input_perturbation=-0.1), ">= 0"),
        (dict(input_perturbation=float("nan")), ">= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="mean type"):
        DiffusionConfig(mean_type="velocity")  # type: ignore[arg-type]


# ---------------------------------------------------------------- sampling: a v-model = its ε-model

class VFromEps(nn.Module):
    """An ε-network rewritten to predict v = (ε̂ − σ_t x_t) / α_t (its x̂_0 and ε̂ are the same)."""

    def __init__(self, net: nn.Module, alpha_bar: torch.Tensor):
        super().__init__()
        self.net, self.alpha_bar = net, alpha_bar

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.net(x, t, **kwargs).double()
        ab = self.alpha_bar[t.long()].view(-1, 1, 1, 1)  # the network's t indexes the original process
        v = (out[:, :3] - (1 - ab).sqrt() * x.double()) / ab.sqrt()
        return torch.cat([v, out[:, 3:]], dim=1).float()


@pytest.fixture(scope="module")
def eps_and_v_models(tmp_path_factory):
    unet = dataclasses.replace(TINY_UNET, null_class=True)
    eps_model = load_model(write_unet(tmp_path_factory.mktemp("v") / "eps.pt", unet))
    alpha_bar = make_schedule(eps_model.diffusion, None).alpha_bar
    v_model = dataclasses.replace(
        eps_model, model=VFromEps(eps_model.model, alpha_bar),
        diffusion=dataclasses.replace(eps_model.diffusion, mean_type="v"),
    )
    return eps_model, v_model


def test_v_model_denoiser_gives_the_eps_model_x0(eps_and_v_models) -> None:
    eps_model, v_model = eps_and_v_models
    schedule = make_schedule(eps_model.diffusion, None)
    x = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([99, 40, 0]), torch.tensor([0, 3, 1])
    outs = []
    for m in (eps_model, v_model):
        fn = lambda x_, t_, y_, net=m.model: net(x_, t_, y=y_)  # noqa: E731
        outs.append(Denoiser(fn, schedule=schedule, config=m.diffusion, labels=y, clip_denoised=False)(x, t))
    for field in ("x0_pred", "eps_pred", "mean", "var"):
        torch.testing.assert_close(getattr(outs[1], field), getattr(outs[0], field), rtol=1e-4, atol=1e-4, msg=field)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_agrees_for_v_and_eps(eps_and_v_models, models, sampler: str) -> None:
    """With classifier and classifier-free guidance, every sampler gives the same images."""
    eps_model, v_model = eps_and_v_models
    clf = load_model(models["classifier"])
    kw = dict(sampler=sampler, respacing="5", spacing=None if sampler in ("ddpm", "ddim") else "logsnr",
              classifier=clf, guidance_scale=2.0, cfg_scale=1.5, seed=3)
    a, labels_a = sample_images(eps_model, 2, **kw)
    b, labels_b = sample_images(v_model, 2, **kw)
    assert torch.equal(labels_a, labels_b) and torch.isfinite(b).all()
    torch.testing.assert_close(b, a, rtol=0, atol=2e-3)


# ---------------------------------------------------------------- the CLI



def test_v_prediction_run_trains_and_samples(tmp_path) -> None:
    run = tmp_path / "v"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 2, "--prediction", "v", "--min-snr-gamma", 5,
        "--input-perturbation", 0.1)
    loaded = load_model(run)
    assert loaded.diffusion.mean_type == "v"
    train = json.loads((run / "run.json").read_text())["config"]["train"]
    assert (train["min_snr_gamma"], train["input_perturbation"], train["p2_gamma"]) == (5.0, 0.1, 0.0)
    for sampler in ("ddpm", "dpm++2m"):
        out = tmp_path / f"{sampler}.npz"
        adm("sample", run, "-n", 2, "--sampler", sampler, "--steps", 4, "--out", out, "--quiet")
        assert np.load(out)["arr_0"].shape == (2, 8, 8, 3)
    assert "--min-snr-gamma 1 differs from the run's 5" in adm_fails(
        "train-diffusion", "--out", run, "--resume", "--steps", 3, "--min-snr-gamma", 1)


def test_resume_with_the_objectives_is_exact(tmp_path) -> None:
    """2 steps in one go == 1 step, stop, resume to 2: ξ comes from each step's seeded generator."""
    opts = [*TINY, "--prediction", "v", "--min-snr-gamma", 5, "--input-perturbation", 0.1, "--timestep-sampling", "loss-second-moment"]
    adm("train-diffusion", DATA, "--out", tmp_path / "a", *opts, "--steps", 2)
    adm("train-diffusion", DATA, "--out", tmp_path / "b", *opts, "--steps", 1)
    adm("train-diffusion", "--out", tmp_path / "b", "--resume", "--steps", 2, "--quiet", "--log-every", 1)
    assert_same_state(tmp_path / "a/checkpoints/step-00000002.pt", tmp_path / "b/checkpoints/step-00000002.pt")


def test_p2_and_legacy_prediction_flags(tmp_path) -> None:
    adm("train-diffusion", DATA, "--out", tmp_path / "p2", *TINY, "--steps", 1, "--p2-gamma", 1, "--p2-k", 2,
        "--predict-x0", "--prediction", "x0")
    loaded = load_model(tmp_path / "p2")
    assert loaded.diffusion.mean_type == "x0"
    train = json.loads((tmp_path / "p2" / "run.json").read_text())["config"]["train"]
    assert (train["p2_gamma"], train["p2_k"], train["min_snr_gamma"]) == (1.0, 2.0, None)


def test_bad_objective_options_exit_2_and_leave_no_run(tmp_path) -> None:
    cases = [
        (["--prediction", "v", "--predict-x0"], "contradicts"),
        (["--prediction", "eps", "--predict-x0"], "contradicts"),
        (["--min-snr-gamma", 5, "--loss", "kl"], "kl"),
        (["--p2-gamma", 1, "--loss", "kl"], "kl"),
        (["--min-snr-gamma", 5, "--p2-gamma", 1], "choose one"),
        (["--min-snr-gamma", -1], "positive"),
        (["--p2-gamma", -1], ">= 0"),
        (["--input-perturbation", -0.1], ">= 0"),
    ]
    for i, (options, message) in enumerate(cases):
        out = tmp_path / f"bad{i}"
        assert message in adm_fails("train-diffusion", DATA, "--out", out, *TINY, "--steps", 1, *options)
        assert not out.exists(), options


def test_help_lists_the_objectives() -> None:
    text = adm("train-diffusion", "--help")
    for option in ("--prediction", "--min-snr-gamma", "--p2-gamma", "--p2-k", "--input-perturbation"):
        assert option in text
