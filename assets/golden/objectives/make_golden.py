"""Regenerate values.json (objectives beyond ADM) from the authors' own training code.

    python assets/golden/objectives/make_golden.py \
        --min-snr /path/to/Min-SNR-Diffusion-Training --p2 /path/to/P2-weighting --ip /path/to/DDPM-IP

This script is ours; it only *calls* each repository's `guided_diffusion/gaussian_diffusion.py`
(`get_named_beta_schedule`, `GaussianDiffusion.training_losses`) on fixed inputs with a fixed tiny
network (`network` below, repeated in tests/test_objectives.py) and stores the per-image terms.
The three repositories all name their package `guided_diffusion`; each is imported in turn and
dropped from sys.modules before the next.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

SHAPE = (6, 3, 4, 4)  # (B, C, H, W)
STEPS = 100
SEEDS = {"x0": 1, "noise": 2, "xi": 3, "weight": 7}
T_FRACTIONS = (0.0, 0.01, 0.25, 0.5, 0.77, 1.0)  # t = round(f (T - 1)): both ends and between

# case: (repository, schedule, mean type, variance type, reference loss type, our loss, options)
# options: mse_loss_weight_type (Min-SNR), p2_gamma / p2_k (P2), input_pertub (DDPM-IP); ours in "ours".
CASES = {
    "minsnr_eps_fixed_small_linear": ("min-snr", "linear", "epsilon", "fixed_small", "MSE", "simple",
                                      {"mse_loss_weight_type": "min_snr_5"}, {"min_snr_gamma": 5.0}),
    "minsnr_x0_fixed_large_cosine": ("min-snr", "cosine", "x0", "fixed_large", "MSE", "simple",
                                     {"mse_loss_weight_type": "min_snr_5"}, {"min_snr_gamma": 5.0}),
    "minsnr_v_fixed_small_linear": ("min-snr", "linear", "v", "fixed_small", "MSE", "simple",
                                    {"mse_loss_weight_type": "vmin_snr_5"}, {"min_snr_gamma": 5.0}),
    "minsnr_v_fixed_small_cosine_gamma1": ("min-snr", "cosine", "v", "fixed_small", "MSE", "simple",
                                           {"mse_loss_weight_type": "vmin_snr_1"}, {"min_snr_gamma": 1.0}),
    "minsnr_eps_learned_range_cosine_hybrid": ("min-snr", "cosine", "epsilon", "learned_range", "RESCALED_MSE", "hybrid",
                                               {"mse_loss_weight_type": "min_snr_5"}, {"min_snr_gamma": 5.0}),
    "v_unweighted_fixed_small_cosine": ("min-snr", "cosine", "v", "fixed_small", "MSE", "simple",
                                        {"mse_loss_weight_type": "constant"}, {}),
    "p2_eps_fixed_small_linear": ("p2", "linear", "epsilon", "fixed_small", "MSE", "simple",
                                  {"p2_gamma": 1.0, "p2_k": 1.0}, {"p2_gamma": 1.0, "p2_k": 1.0}),
    "p2_eps_learned_range_cosine_hybrid": ("p2", "cosine", "epsilon", "learned_range", "RESCALED_MSE", "hybrid",
                                           {"p2_gamma": 0.5, "p2_k": 1.0}, {"p2_gamma": 0.5, "p2_k": 1.0}),
    "p2_x0_fixed_large_linear_k2": ("p2", "linear", "x0", "fixed_large", "MSE", "simple",
                                    {"p2_gamma": 1.0, "p2_k": 2.0}, {"p2_gamma": 1.0, "p2_k": 2.0}),
    "ip_eps_fixed_small_linear": ("ip", "linear", "epsilon", "fixed_small", "MSE", "simple",
                                  {"input_pertub": 0.1}, {"input_perturbation": 0.1}),
    "ip_eps_learned_range_cosine_hybrid": ("ip", "cosine", "epsilon", "learned_range", "RESCALED_MSE", "hybrid",
                                           {"input_pertub": 0.1}, {"input_perturbation": 0.1}),
}
REFERENCE_MEAN = {"epsilon": "EPSILON", "x0": "START_X", "v": "VELOCITY"}
REFERENCE_VAR = {"fixed_small": "FIXED_SMALL", "fixed_large": "FIXED_LARGE", "learned_range": "LEARNED_RANGE"}


def draw(name: str, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(SEEDS[name]))


def timesteps(steps: int = STEPS) -> torch.Tensor:
    return torch.tensor([round(f * (steps - 1)) for f in T_FRACTIONS], dtype=torch.int64)


def network(out_channels: int):
    """A fixed tiny 'network': a seeded 3x3 convolution of x_t plus 0.002 t (so the output depends on t)."""
    g = torch.Generator().manual_seed(SEEDS["weight"])
    weight = 0.2 * torch.randn((out_channels, SHAPE[1], 3, 3), generator=g)
    bias = 0.1 * torch.randn((out_channels,), generator=g)

    def model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        out = torch.nn.functional.conv2d(x, weight, bias, padding=1)
        return out + 0.002 * t.float().reshape(-1, 1, 1, 1)

    return model


def reference_package(root: Path):
    for name in [m for m in sys.modules if m == "guided_diffusion" or m.startswith("guided_diffusion.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("guided_diffusion.gaussian_diffusion")
    finally:
        sys.path.remove(str(root))


def commit(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"


def run_case(gd, case: str) -> dict:
    _, schedule, mean_type, var_type, loss_type, our_loss, ref_options, ours = CASES[case]
    betas = gd.get_named_beta_schedule(schedule, STEPS)
    diffusion = gd.GaussianDiffusion(
        betas=betas,
        model_mean_type=getattr(gd.ModelMeanType, REFERENCE_MEAN[mean_type]),
        model_var_type=getattr(gd.ModelVarType, REFERENCE_VAR[var_type]),
        loss_type=getattr(gd.LossType, loss_type),
        rescale_timesteps=False,
        **ref_options,
    )
    x0, noise, t = draw("x0").clamp(-1, 1), draw("noise"), timesteps()
    channels = SHAPE[1] * (2 if var_type.startswith("learned") else 1)
    torch.manual_seed(SEEDS["xi"])  # DDPM-IP draws ξ with th.randn_like(noise): the same stream as draw("xi")
    with torch.no_grad():
        terms = diffusion.training_losses(network(channels), x0, t, noise=noise)
    out = {
        "schedule": schedule, "mean_type": mean_type, "var_type": var_type, "reference_loss": loss_type,
        "our_loss": our_loss, "reference_options": ref_options, "our_options": ours,
    }
    for key in ("loss", "mse", "vb"):
        if key in terms:
            out[key] = [float(v) for v in terms[key].double()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--min-snr", type=Path, required=True, help="checkout of TiankaiHang/Min-SNR-Diffusion-Training")
    parser.add_argument("--p2", type=Path, required=True, help="checkout of jychoi118/P2-weighting")
    parser.add_argument("--ip", type=Path, required=True, help="checkout of forever208/DDPM-IP")
    parser.add_argument("--out", type=Path, default=HERE / "values.json")
    args = parser.parse_args()
    roots = {"min-snr": args.min_snr, "p2": args.p2, "ip": args.ip}
    torch.manual_seed(SEEDS["xi"])
    assert torch.equal(torch.randn(SHAPE), draw("xi")), "the global and a fresh generator must give one stream"
    cases: dict[str, dict] = {}
    for repo, root in roots.items():
        gd = reference_package(root)
        for case in (c for c in CASES if CASES[c][0] == repo):
            cases[case] = {"repository": repo, **run_case(gd, case)}
    values = {
        "inputs": {"shape": list(SHAPE), "steps": STEPS, "seeds": SEEDS, "t": timesteps().tolist(),
                   "x0": "torch.randn(shape, generator=Generator().manual_seed(seeds.x0)).clamp(-1, 1)",
                   "noise": "... seeds.noise", "xi": "... seeds.xi (DDPM-IP only)",
                   "network": "conv2d(x_t, 0.2 randn(C_out, C, 3, 3), 0.1 randn(C_out), padding=1) + 0.002 t, both from seeds.weight"},
        "references": {repo: {"commit": commit(root)} for repo, root in roots.items()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
        "cases": cases,
    }
    args.out.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
