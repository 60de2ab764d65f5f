"""The training objectives, the loss-aware timestep sampler and the EMA equal guided-diffusion's.

Golden values: assets/golden/train/golden.npz, made by assets/golden/train/make_golden.py from the
reference implementation (openai/guided-diffusion @ 22e0df8); provenance in the README there.
float32 results are compared to 1e-5 (gradients: 1e-5 of their largest magnitude), the float64
sampler distributions to 1e-12.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.config import DiffusionConfig, UNetConfig
from adm_cli.diffusion import make_schedule, model_timesteps, q_sample
from adm_cli.nn import build_unet
from adm_cli.train.objectives import diffusion_terms
from adm_cli.train.optim import grad_norm, update_ema
from adm_cli.train.timesteps import LossSecondMomentSampler
from tests.golden_weights import deterministic_state_dict

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden" / "train" / "golden.npz"
F32 = {"rtol": 1e-5, "atol": 1e-5}
F64 = {"rtol": 1e-12, "atol": 1e-15}
GRAD_TOL = 1e-5  # of the largest reference magnitude

# case: (schedule, steps, var_type, mean_type); the loss is stored in the file ("our_loss").
OBJECTIVES = {
    "linear1000_learned_range_eps_mse": ("linear", 1000, "learned_range", "epsilon"),
    "linear100_learned_range_eps_rescaled_mse": ("linear", 100, "learned_range", "epsilon"),
    "cosine1000_learned_range_eps_kl": ("cosine", 1000, "learned_range", "epsilon"),
    "linear1000_fixed_small_eps_mse": ("linear", 1000, "fixed_small", "epsilon"),
    "cosine1000_fixed_large_x0_mse": ("cosine", 1000, "fixed_large", "x0"),
    "linear1000_learned_eps_rescaled_mse": ("linear", 1000, "learned", "epsilon"),
}
# The reference UNetModel of the network case (make_golden.py UNET_KWARGS) in our terms.
UNET = UNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(8,),
    channel_mult=(1, 2),
    dropout=0.0,
    num_classes=4,
    learn_sigma=True,
    num_heads=4,
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    attention_order="legacy",
)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def close(actual: torch.Tensor, expected: np.ndarray, **tol: float) -> None:
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, **(tol or F32))


def close_grad(actual: torch.Tensor, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, rtol=GRAD_TOL, atol=GRAD_TOL * scale)


@pytest.mark.parametrize("case", list(OBJECTIVES))
def test_objective(golden: dict[str, np.ndarray], case: str) -> None:
    name, steps, var_type, mean_type = OBJECTIVES[case]
    config = DiffusionConfig(steps=steps, schedule=name, var_type=var_type, mean_type=mean_type)  # type: ignore[arg-type]
    schedule = make_schedule(config, None)
    key = f"objective/{case}"
    x0 = torch.from_numpy(golden["objective/inputs/x_start"])
    noise = torch.from_numpy(golden["objective/inputs/noise"])
    t = torch.from_numpy(golden[f"{key}/t"])
    x_t = q_sample(x0, t, noise, schedule=schedule)
    close(x_t, golden[f"{key}/x_t"])

    output = torch.from_numpy(golden[f"{key}/model_output"]).clone().requires_grad_(True)
    loss = str(golden[f"{key}/our_loss"])
    terms = diffusion_terms(output, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss=loss)  # type: ignore[arg-type]
    reference = [k for k in ("loss", "mse", "vb") if f"{key}/{k}" in golden]
    for k in reference:
        close(terms[k], golden[f"{key}/{k}"])
    if loss == "kl":  # the reference returns the bound term as "loss" only
        assert reference == ["loss"]
        close(terms["vb"], golden[f"{key}/loss"])
    terms["loss"].sum().backward()
    close_grad(output.grad, golden[f"{key}/grad_output"])


def test_objective_mean_is_detached_in_vb(golden: dict[str, np.ndarray]) -> None:
    """In the hybrid loss the mean channels get only the MSE gradient (the golden confirms it)."""
    key = "objective/linear1000_learned_range_eps_mse"
    grad = golden[f"{key}/grad_output"]
    mean_out = golden[f"{key}/model_output"][:, :3]
    noise = golden["objective/inputs/noise"]
    mse_grad = 2.0 * (mean_out - noise) / mean_out[0].size
    np.testing.assert_allclose(grad[:, :3], mse_grad, rtol=1e-5, atol=1e-8)
    assert np.abs(grad[:, 3:]).max() > 0


def test_unet_hybrid_loss_and_gradients(golden: dict[str, np.ndarray]) -> None:
    model = build_unet(UNET)
    ref_shapes = {k: tuple(v) for k, v in json.loads(str(golden["unet/param_shapes_json"])).items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref_shapes
    model.load_state_dict(deterministic_state_dict(ref_shapes), strict=True)
    model.train()

    config = DiffusionConfig(steps=1000, schedule="linear", var_type="learned_range", mean_type="epsilon")
    schedule = make_schedule(config, None)
    x0, noise, t, y = (torch.from_numpy(golden[f"unet/{k}"]) for k in ("x_start", "noise", "t", "y"))
    x_t = q_sample(x0, t, noise, schedule=schedule)
    close(x_t, golden["unet/x_t"])
    output = model(x_t, model_timesteps(schedule, t, rescale=False), y=y)
    close_grad(output, golden["unet/model_output"])
    terms = diffusion_terms(output, x0=x0, x_t=x_t, t=t, noise=noise, schedule=schedule, config=config, loss="hybrid")
    for k in ("loss", "mse", "vb"):
        close(terms[k], golden[f"unet/{k}"])
    terms["loss"].mean().backward()
    params = dict(model.named_parameters())
    for name in golden["unet/grad_names"]:
        close_grad(params[str(name)].grad, golden[f"unet/grad/{name}"])
    norm = grad_norm(list(model.parameters()))
    np.testing.assert_allclose(norm.item(), float(golden["unet/grad_norm"]), rtol=1e-5)


def test_loss_second_moment_sampler(golden: dict[str, np.ndarray]) -> None:
    ts, losses = golden["sampler/t"], golden["sampler/losses"]
    reference, warmed = golden["sampler/weights"], golden["sampler/warmed_up"]
    importance = golden["sampler/importance_weights"]
    steps = reference.shape[1]
    assert not warmed[0] and warmed[-1]  # the sequence crosses the warm-up
    sampler = LossSecondMomentSampler(steps)
    generator = torch.Generator().manual_seed(0)
    for i in range(len(ts)):
        sampler.update(torch.from_numpy(ts[i]), torch.from_numpy(losses[i]))
        assert sampler.warmed_up == bool(warmed[i])
        # guided-diffusion's weights() is un-normalised (ones) before warm-up; sample() uses w / sum(w).
        close(sampler.weights(), reference[i] / reference[i].sum(), **F64)
        t, w = sampler.sample(64, generator)
        close(w, importance[i][t.numpy()], rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("rate", ["0.9999", "0.5"])
def test_update_ema(golden: dict[str, np.ndarray], rate: str) -> None:
    n = len([k for k in golden if k.startswith("ema/inputs/ema")])
    ema = [torch.from_numpy(golden[f"ema/inputs/ema{i}"]).clone() for i in range(n)]
    params = [torch.from_numpy(golden[f"ema/inputs/param{i}"]) for i in range(n)]
    update_ema(ema, params, float(rate))
    for i in range(n):
        close(ema[i], golden[f"ema/{rate}/{i}"], rtol=1e-7, atol=1e-7)
