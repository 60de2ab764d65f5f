"""Golden values from the reference implementation (openai/guided-diffusion @22e0df8).

assets/golden/diffusion/golden.npz is written by assets/golden/diffusion/make_golden.py; see the
README there for the provenance. float64 tables are compared to 1e-12, float32 outputs to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.config import DiffusionConfig
from tests.diffusion_helpers import denoiser
from adm_cli.diffusion import (
    betas_for,
    condition_mean,
    condition_score,
    ddim_reverse_step,
    ddim_step,
    ddpm_step,
    make_schedule,
    model_timesteps,
    p_mean_variance,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
    vlb_terms,
)

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden" / "diffusion" / "golden.npz"
F32 = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-12, atol=1e-15)
# guided-diffusion evaluates DDIM's coefficients in float32 from float32 ᾱ, so 1 - ᾱ_{t-1},
# 1 - ᾱ_{t+1} and 1 - ᾱ_t/ᾱ_{t-1} cancel at steps 0-1, where ᾱ ≈ 1 (σ_1 is off by 1e-4 relative
# on the 1000-step linear schedule). We derive them in float64 and stay within 1e-6 of an
# all-float64 evaluation (test_diffusion_samplers), so DDIM images at steps 0-1 are compared
# more loosely; the others to float32 precision.
GD_DDIM_EARLY = dict(rtol=1e-5, atol=1e-3)


def close_ddim(actual: torch.Tensor, expected: np.ndarray, t: torch.Tensor) -> None:
    small = (t <= 1).numpy()
    close(actual[~small], expected[~small])
    close(actual[small], expected[small], **GD_DDIM_EARLY)
STEP_SETTINGS = {"linear_full": ("linear", None), "cosine_ddim25": ("cosine", "ddim25")}
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
MEAN_TYPES = ("epsilon", "x0")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def close(actual: torch.Tensor, expected: np.ndarray, **tol: float) -> None:
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, **(tol or F32))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_betas_and_respacing(golden: dict[str, np.ndarray], schedule: str) -> None:
    close(betas_for(DiffusionConfig(schedule=schedule)), golden[f"betas/{schedule}"], **F64)
    for spec in ("ddim25", "250", "90,60,60,20,20"):
        respaced = make_schedule(DiffusionConfig(schedule=schedule), spec)
        key = f"respaced/{schedule}/{spec}"
        np.testing.assert_array_equal(respaced.timesteps.numpy(), golden[f"{key}/timesteps"])
        close(respaced.betas, golden[f"{key}/betas"], **F64)
        close(respaced.posterior_var, golden[f"{key}/posterior_variance"], **F64)


def test_space_timesteps(golden: dict[str, np.ndarray]) -> None:
    keys = [k for k in golden if k.startswith("space/")]
    assert len(keys) == 6
    for key in keys:
        _, steps, spec = key.split("/")
        assert space_timesteps(int(steps), spec) == tuple(golden[key].tolist()), key


@pytest.mark.parametrize("spec", ["ddim50", "full"])
def test_rescaled_model_timesteps(golden: dict[str, np.ndarray], spec: str) -> None:
    schedule = make_schedule(DiffusionConfig(steps=500, rescale_timesteps=True), None if spec == "full" else spec)
    t = torch.from_numpy(golden[f"rescale/linear500/{spec}/t"])
    model_t = model_timesteps(schedule, t, rescale=True)
    assert model_t.dtype == torch.float32
    close(model_t, golden[f"rescale/linear500/{spec}/model_t"])


@pytest.mark.parametrize("setting", list(STEP_SETTINGS))
@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_one_step(golden: dict[str, np.ndarray], setting: str, var_type: str, mean_type: str) -> None:
    name, spec = STEP_SETTINGS[setting]
    config = DiffusionConfig(schedule=name, var_type=var_type, mean_type=mean_type)  # type: ignore[arg-type]
    schedule = make_schedule(config, spec)
    inputs = {k.split("/")[-1]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("step/inputs/")}
    x_t, noise, grad, x0 = inputs["x_t"], inputs["noise"], inputs["grad"], inputs["x0"]
    output = inputs["model_out"] if config.learned_variance else inputs["model_out"][:, :3]
    t = torch.from_numpy(golden[f"step/{setting}/t"])
    want = {k.split("/")[-1]: v for k, v in golden.items() if k.startswith(f"step/{setting}/{var_type}/{mean_type}/")}

    out = p_mean_variance(output, x_t, t, schedule=schedule, config=config)
    close(out.mean, want["pmv_mean"])
    close(out.var, want["pmv_variance"])
    close(out.log_var, want["pmv_log_variance"])
    close(out.x0_pred, want["pmv_pred_xstart"])
    raw = p_mean_variance(output, x_t, t, schedule=schedule, config=config, clip_denoised=False)
    close(raw.mean, want["pmv_noclip_mean"])
    close(raw.x0_pred, want["pmv_noclip_pred_xstart"])

    close(ddpm_step(out, x_t, t, noise), want["p_sample"])
    close(ddpm_step(condition_mean(grad, out), x_t, t, noise), want["p_sample_guided"])
    close(condition_mean(grad, out).mean, want["condition_mean"])
    for eta, key in ((0.0, "ddim_eta0"), (0.7, "ddim_eta07"), (1.0, "ddim_eta1")):
        close_ddim(ddim_step(out, x_t, t, noise, schedule=schedule, eta=eta), want[key], t)
    guided = condition_score(grad, out, x_t, t, schedule=schedule)
    close(guided.mean, want["condition_score_mean"])
    close(guided.x0_pred, want["condition_score_pred_xstart"])
    close_ddim(ddim_step(guided, x_t, t, None, schedule=schedule, eta=0.0), want["ddim_eta0_guided"], t)
    close_ddim(ddim_reverse_step(out, x_t, t, schedule=schedule), want["ddim_reverse"], t)
    close(vlb_terms(raw, x0, x_t, t, schedule=schedule), want["vb_terms_bpd"])


def loop_model(x: torch.Tensor, ts: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The fake network of make_golden.py."""
    reps = a.shape[0] // x.shape[1]
    return torch.tanh(a * torch.cat([x] * reps, dim=1) + (ts.float() / 1000.0).view(-1, 1, 1, 1) * b)


def loop_cond(x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The fake classifier gradient of make_golden.py."""
    return -0.3 * x * (1.0 + ts.float() / 1000.0).view(-1, 1, 1, 1)


LOOPS = {
    "ddpm_linear50_fixed_small_eps": ("linear", "50", "fixed_small", "epsilon", "ddpm", 0.0, False),
    "ddpm_linear50_learned_range_eps_guided": ("linear", "50", "learned_range", "epsilon", "ddpm", 0.0, True),
    "ddpm_cosine_ddim25_fixed_large_x0": ("cosine", "ddim25", "fixed_large", "x0", "ddpm", 0.0, False),
    "ddim_cosine_ddim25_learned_range_eps_guided": ("cosine", "ddim25", "learned_range", "epsilon", "ddim", 0.0, True),
    "ddim_linear50_fixed_small_eps_eta05": ("linear", "50", "fixed_small", "epsilon", "ddim", 0.5, False),
}


@pytest.mark.parametrize("case", list(LOOPS))
def test_sampling_loop(golden: dict[str, np.ndarray], case: str) -> None:
    name, spec, var_type, mean_type, sampler, eta, guided = LOOPS[case]
    config = DiffusionConfig(schedule=name, var_type=var_type, mean_type=mean_type)  # type: ignore[arg-type]
    schedule = make_schedule(config, spec)
    x_T, a, b = (torch.from_numpy(golden[f"loop/inputs/{k}"]) for k in ("x_T", "a", "b"))
    channels = 6 if config.learned_variance else 3
    gens = [torch.Generator().manual_seed(int(s)) for s in golden["loop/inputs/seeds"]]

    def model_fn(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        return loop_model(x, model_t, a[:channels], b[:channels])

    cond = loop_cond if guided else None
    if sampler == "ddpm":
        sample = sample_ddpm(denoiser(model_fn, schedule, config, cond_fn=cond, mode="mean"), x_T, generators=gens)
    else:
        sample = sample_ddim(denoiser(model_fn, schedule, config, cond_fn=cond), x_T, generators=gens, eta=eta)
    close(sample, golden[f"loop/{case}"])
