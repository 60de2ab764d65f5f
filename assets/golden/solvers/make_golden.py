"""Golden values for the ODE samplers (DPM-Solver++ 2M/3M, UniPC bh2, EDM Heun).

Runs the reference implementations on a fake noise-prediction network and records every network
call (input x and timestep) and the final sample.  The reference code is imported (or, for EDM,
its `edm_sampler` function is read and executed) from the paths given; nothing is copied.

Usage (from the repository root):

    python assets/golden/solvers/make_golden.py \
        /path/to/dpm-solver/dpm_solver_pytorch.py \
        /path/to/UniPC/uni_pc.py \
        /path/to/edm/generate.py

Writes `golden.npz` beside this script.  Everything runs on the CPU in float64; torch's default
dtype is set to float64 because both DPM-Solver and UniPC build their time grids (and UniPC its
`rks`) with dtype-less `torch.linspace` / `torch.tensor`, which would otherwise be float32.
See README.md for the keys.
"""

import ast
import contextlib
import importlib.util
import os
import sys

import numpy as np
import torch

T = 1000
STEPS = 27


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_edm_sampler(path):
    """Exec only `edm_sampler` from EDM's generate.py (the module imports dnnlib, torch_utils)."""
    with open(path) as f:
        source = f.read()
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "edm_sampler")
    namespace = {"torch": torch, "np": np}
    exec(ast.get_source_segment(source, node), namespace)
    return namespace["edm_sampler"]


class FakeEps:
    """eps(x, t) = tanh(a * x + (t / 1000) * b); records every call (x and t of image 0)."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.xs, self.ts = [], []

    def __call__(self, x, t):
        assert x.dtype == torch.float64 and t.dtype == torch.float64, (x.dtype, t.dtype)
        self.xs.append(x.clone())
        self.ts.append(t[0].clone())
        return torch.tanh(self.a * x + (t / 1000.0).view(-1, 1, 1, 1) * self.b)

    def record(self, out, prefix, final):
        out[f"{prefix}/eval_x"] = torch.stack(self.xs).numpy()
        out[f"{prefix}/eval_t"] = torch.stack(self.ts).numpy()
        out[f"{prefix}/final"] = final.numpy()


class FakeEDMNet:
    """EDM-style denoiser D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), j) on the DDPM grid."""

    def __init__(self, eps, alphas_cumprod):
        self.eps = eps
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # sigma_j, j = 0..T-1
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self.rounded_steps = None

    def index(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma.reshape(-1, 1) - self.sigmas.reshape(1, -1)).abs().argmin(1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        result = self.sigmas[self.index(sigma)]
        if sigma.dim() == 1 and self.rounded_steps is None:
            self.rounded_steps = result.clone()  # edm_sampler's t_steps[:-1]
        return result

    def __call__(self, x, sigma, class_labels=None):
        j = self.index(sigma)
        assert self.sigmas[j] == sigma, "sigma is expected on the grid"
        x_t = x / (1 + sigma ** 2).sqrt()
        t = j.to(torch.float64).expand(x.shape[0])
        return x - sigma * self.eps(x_t, t)


def main(dpm_path, unipc_path, edm_path):
    torch.set_default_dtype(torch.float64)
    dpm = load_module("ref_dpm_solver_pytorch", dpm_path)
    unipc = load_module("ref_uni_pc", unipc_path)
    edm_sampler = load_edm_sampler(edm_path)

    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    rng = np.random.default_rng(0)
    x_T_np = rng.standard_normal((2, 3, 4, 4))
    a_np = 0.5 + 0.3 * rng.standard_normal((3, 1, 1))
    b_np = rng.standard_normal((3, 1, 1))
    x_T, a, b = (torch.from_numpy(v) for v in (x_T_np, a_np, b_np))

    out = {"inputs/x_T": x_T_np, "inputs/a": a_np, "inputs/b": b_np, "inputs/betas": betas.numpy()}

    # DPM-Solver++ multistep (2M, 3M, 2M with dynamic thresholding).
    dpm_cases = {
        "dpmpp2m": dict(order=2, solver=dict()),
        "dpmpp3m": dict(order=3, solver=dict()),
        "dpmpp2m_thresh": dict(order=2, solver=dict(correcting_x0_fn="dynamic_thresholding",
                                                    dynamic_thresholding_ratio=0.995,
                                                    thresholding_max_val=1.0)),
    }
    for name, case in dpm_cases.items():
        fake = FakeEps(a, b)
        ns = dpm.NoiseScheduleVP("discrete", betas=betas, dtype=torch.float64)
        model_fn = dpm.model_wrapper(fake, ns, model_type="noise")
        solver = dpm.DPM_Solver(model_fn, ns, algorithm_type="dpmsolver++", **case["solver"])
        final = solver.sample(x_T.clone(), steps=STEPS, order=case["order"], skip_type="time_uniform",
                              method="multistep", lower_order_final=False)
        fake.record(out, name, final)

    # UniPC bh2, data prediction, multistep order 2.
    fake = FakeEps(a, b)
    ns = unipc.NoiseScheduleVP("discrete", betas=betas, dtype=torch.float64)
    model_fn = unipc.model_wrapper(fake, ns, model_type="noise")
    solver = unipc.UniPC(model_fn, ns, algorithm_type="data_prediction", correcting_x0_fn=None,
                         variant="bh2")
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # UniPC prints at every step
        final = solver.sample(x_T.clone(), steps=STEPS, skip_type="time_uniform", method="multistep",
                              order=2, lower_order_final=False)
    fake.record(out, "unipc_bh2", final)

    # EDM Heun (deterministic, S_churn = 0) on the DDPM sigma grid.
    fake = FakeEps(a, b)
    net = FakeEDMNet(fake, alphas_cumprod)
    s0 = net.round_sigma(80.0)
    latents = x_T * (1 + s0 ** 2).sqrt() / s0
    net.rounded_steps = None
    final = edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=10,
                        sigma_min=0.002, sigma_max=80, rho=7, S_churn=0)
    fake.record(out, "heun", final)
    out["heun/sigma_steps"] = net.rounded_steps.numpy()
    out["heun/index_steps"] = net.index(net.rounded_steps).numpy()

    for key, value in out.items():
        assert np.all(np.isfinite(value)), key
        assert value.dtype in (np.float64, np.int64), (key, value.dtype)
    for name in ("dpmpp2m", "dpmpp3m", "dpmpp2m_thresh", "unipc_bh2"):
        assert len(out[f"{name}/eval_t"]) == STEPS, name
    assert len(out["heun/eval_t"]) == 2 * 10 - 1

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.npz")
    np.savez(path, **out)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
