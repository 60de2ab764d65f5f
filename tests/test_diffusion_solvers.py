"""The fast ODE solvers: the authors' code (golden), convergence order on Gaussian data, consistency.

assets/golden/solvers/golden.npz comes from LuChengTHU/dpm-solver, wl-zhao/UniPC and NVlabs/edm run
side by side on a fake network (make_golden.py and README.md there). Every network input of the
reference run is compared with ours, in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import (
    edm_sigma,
    log_snr,
    make_schedule,
    respace,
    sample_ddim,
    sample_dpmpp,
    sample_heun,
    sample_unipc,
    solver_timesteps,
)
from tests.diffusion_helpers import denoiser

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden" / "solvers" / "golden.npz"
F64 = dict(rtol=1e-9, atol=1e-9)
LINEAR = DiffusionConfig(steps=1000, schedule="linear", var_type="fixed_small")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def recording_model(golden: dict[str, np.ndarray], calls: list[tuple[torch.Tensor, torch.Tensor]]):
    """make_golden.py's fake ε network, remembering every input."""
    a, b = torch.from_numpy(golden["inputs/a"]), torch.from_numpy(golden["inputs/b"])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), t.clone()))
        return torch.tanh(a * x + (t.double() / 1000.0).view(-1, 1, 1, 1) * b)

    return model_fn


CASES = {
    "dpmpp2m": (lambda d, x: sample_dpmpp(d, x, order=2), None),
    "dpmpp3m": (lambda d, x: sample_dpmpp(d, x, order=3), None),
    "dpmpp2m_thresh": (lambda d, x: sample_dpmpp(d, x, order=2), 0.995),
    "unipc_bh2": (lambda d, x: sample_unipc(d, x, order=2), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_multistep_solvers_equal_the_authors_code(golden: dict[str, np.ndarray], case: str) -> None:
    """27 reference steps from t = 999 to 0 (time-uniform) are our first 27 of 28 steps; our 28th
    evaluation's input is the reference's final sample (it stops at t = 0, we go on to x_0)."""
    run, threshold = CASES[case]
    base = make_schedule(LINEAR)
    steps = solver_timesteps(base, 28, "time-uniform")
    assert steps == tuple(range(0, 1000, 37))
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    d = denoiser(recording_model(golden, calls), respace(base, steps), LINEAR, clip_denoised=False, threshold=threshold)
    run(d, torch.from_numpy(golden["inputs/x_T"]))
    assert len(calls) == 28
    np.testing.assert_allclose([float(t[0]) for _, t in calls[:27]], golden[f"{case}/eval_t"], rtol=0, atol=1e-9)
    for i, (x, _) in enumerate(calls[:27]):
        np.testing.assert_allclose(x.numpy(), golden[f"{case}/eval_x"][i], **F64, err_msg=f"call {i}")
    np.testing.assert_allclose(calls[27][0].numpy(), golden[f"{case}/final"], **F64)


def test_heun_equals_edm(golden: dict[str, np.ndarray]) -> None:
    """EDM's Heun with ρ = 7 steps rounded to the checkpoint's σ grid: same steps, same 19 network
    inputs (in x_t space), same x_0."""
    base = make_schedule(LINEAR)
    steps = solver_timesteps(base, 10, "karras")
    assert steps[::-1] == tuple(golden["heun/index_steps"].tolist())
    sch = respace(base, steps)
    np.testing.assert_allclose(edm_sigma(sch.alpha_bar).numpy()[::-1], golden["heun/sigma_steps"], rtol=1e-12)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    d = denoiser(recording_model(golden, calls), sch, LINEAR, clip_denoised=False)
    final = sample_heun(d, torch.from_numpy(golden["inputs/x_T"]))
    assert len(calls) == 19
    np.testing.assert_allclose([float(t[0]) for _, t in calls], golden["heun/eval_t"], rtol=0, atol=0)
    for i, (x, _) in enumerate(calls):
        np.testing.assert_allclose(x.numpy(), golden["heun/eval_x"][i], **F64, err_msg=f"call {i}")
    np.testing.assert_allclose(final.numpy(), golden["heun/final"], **F64)


# --------------------------------------------------------------------------- convergence order


MU, S = 0.3, 0.5  # data: N(MU, S²) per value


def gaussian_eps(schedule_config: DiffusionConfig):
    """The exact ε̂(x_t) = E[ε | x_t] of N(MU, S²) data: √(1-ᾱ)(x_t - √ᾱ MU) / (ᾱ S² + 1 - ᾱ)."""
    alpha_bar = make_schedule(schedule_config).alpha_bar

    def model_fn(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar[model_t.long()].view(-1, 1, 1, 1)
        return torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)

    return model_fn


def exact_flow(x_T: torch.Tensor, ab_from: float, ab_to: float) -> torch.Tensor:
    """The probability-flow ODE maps x at level ᾱ to the same standard score z = (x - √ᾱ MU)/√(ᾱ S² + 1 - ᾱ)."""
    z = (x_T - math.sqrt(ab_from) * MU) / math.sqrt(ab_from * S**2 + 1 - ab_from)
    return math.sqrt(ab_to) * MU + z * math.sqrt(ab_to * S**2 + 1 - ab_to)


SOLVERS = {
    "ddim": (lambda d, x, cb: sample_ddim(d, x, callback=cb), 1.0),
    "dpm++2m": (lambda d, x, cb: sample_dpmpp(d, x, order=2, callback=cb), 2.0),
    "dpm++3m": (lambda d, x, cb: sample_dpmpp(d, x, order=3, callback=cb), 3.0),
    "unipc": (lambda d, x, cb: sample_unipc(d, x, order=2, callback=cb), 3.0),  # UniC adds one order (UniPC Thm. 3.3)
    "heun": (lambda d, x, cb: sample_heun(d, x, callback=cb), 2.0),
}


def solver_error(name: str, steps: int, spacing: str) -> float:
    """Max |x - exact| at the last noisy level (step 0), where the final jump to x_0 = x̂_0 is not
    a discretisation of the ODE; the first-order solvers' last step is excluded the same way."""
    base = make_schedule(LINEAR)
    sch = respace(base, solver_timesteps(base, steps, spacing))  # type: ignore[arg-type]
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen: list[torch.Tensor] = []
    run, _ = SOLVERS[name]
    run(denoiser(gaussian_eps(LINEAR), sch, LINEAR, clip_denoised=False), x_T,
        lambda i, t, x, out: seen.append(x) if i == steps - 2 else None)
    ab = sch.alpha_bar
    exact = exact_flow(x_T, float(ab[-1]), float(ab[0]))
    return (seen[0] - exact).abs().max().item()


@pytest.mark.parametrize("name", list(SOLVERS))
def test_convergence_order_on_gaussian_data(name: str) -> None:
    """With the exact ε of Gaussian data, the error against the exact probability-flow solution
    falls as (steps)^-order: the slope of a log-log fit over 10..80 log-SNR-uniform steps. Measured:
    DDIM 0.99, DPM-Solver++(2M) 1.78, (3M) 2.68, UniPC-bh2 2.78 (order 2 + the corrector), Heun 2.20."""
    counts = [10, 14, 20, 28, 40, 56, 80]
    errors = [solver_error(name, k, "logsnr") for k in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    order = SOLVERS[name][1]
    assert order - 0.4 < slope < order + 0.5, (name, slope, errors)


# --------------------------------------------------------------------------- consistency


def test_first_order_dpmpp_is_ddim() -> None:
    """DPM-Solver++ of order 1 is DDIM (η = 0) in another form (DPM-Solver++ Sec. 4.1), clipping included."""
    config = DiffusionConfig(steps=200, schedule="cosine")
    sch = make_schedule(config, "15")
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = denoiser(lambda x, t: torch.tanh(1.5 * x + t.double().view(-1, 1, 1, 1) / 200), sch, config)
    torch.testing.assert_close(sample_dpmpp(d, x_T, order=1), sample_ddim(d, x_T), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spacing", ["time-uniform", "logsnr", "karras"])
@pytest.mark.parametrize("count", [1, 2, 5, 20, 100, 1000])
def test_solver_timesteps_are_distinct_and_span_the_process(spacing: str, count: int) -> None:
    base = make_schedule(DiffusionConfig(steps=1000, schedule="cosine"))
    steps = solver_timesteps(base, count, spacing)  # type: ignore[arg-type]
    assert len(steps) == count and list(steps) == sorted(set(steps)) and 0 <= steps[0] and steps[-1] <= 999
    if count > 1:
        assert steps[0] == 0
        assert spacing == "karras" or steps[-1] == 999  # karras starts at σ = 80, below the cosine σ_999


def test_logsnr_spacing_is_uniform_in_lambda() -> None:
    base = make_schedule(LINEAR)
    lam = log_snr(base.alpha_bar)[list(solver_timesteps(base, 20, "logsnr"))]
    gaps = (lam[:-1] - lam[1:]).numpy()
    assert np.all(gaps > 0) and gaps.std() / gaps.mean() < 0.1, gaps
