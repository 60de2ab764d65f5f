"""Regenerate golden.npz from the reference implementation (openai/guided-diffusion).

    python assets/golden/diffusion/make_golden.py /path/to/guided-diffusion [--out golden.npz]

This script is ours; it only *calls* guided-diffusion's GaussianDiffusion / SpacedDiffusion
(gaussian_diffusion.py, respace.py, which need only torch and numpy) on fixed inputs and stores
inputs and outputs. Our tests (tests/test_diffusion_golden.py) feed the same inputs to
adm_cli.diffusion and compare. Key names: "<group>/<case>/<name>".

Where the reference draws noise with torch.randn_like inside p_sample / ddim_sample, the
script replaces torch.randn_like with per-image draws from seeded CPU generators, which is
exactly how adm_cli draws noise (float32, one generator per image), so the loops compare
end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

SPECS = ("ddim25", "250", "90,60,60,20,20")
EXTRA_SPACINGS = (
    (1000, "ddim100"), (4000, "ddim50"), (300, "10,15,20"), (1000, "10,20,30"), (100, "7,3"), (1000, "50")
)
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
MEAN_TYPES = ("epsilon", "x0")
STEP_SETTINGS = {  # name: (schedule, respacing, step indices)
    "linear_full": ("linear", "", [0, 1, 500, 999]),
    "cosine_ddim25": ("cosine", "ddim25", [0, 1, 12, 24]),
}
LOOPS = {  # name: (schedule, respacing, var_type, mean_type, sampler, eta, guided)
    "ddpm_linear50_fixed_small_eps": ("linear", "50", "fixed_small", "epsilon", "ddpm", 0.0, False),
    "ddpm_linear50_learned_range_eps_guided": ("linear", "50", "learned_range", "epsilon", "ddpm", 0.0, True),
    "ddpm_cosine_ddim25_fixed_large_x0": ("cosine", "ddim25", "fixed_large", "x0", "ddpm", 0.0, False),
    "ddim_cosine_ddim25_learned_range_eps_guided": ("cosine", "ddim25", "learned_range", "epsilon", "ddim", 0.0, True),
    "ddim_linear50_fixed_small_eps_eta05": ("linear", "50", "fixed_small", "epsilon", "ddim", 0.5, False),
}
STEP_SHAPE = (4, 3, 2, 2)
LOOP_SHAPE = (2, 3, 2, 2)
LOOP_SEEDS = (11, 12)


def loop_model(x: torch.Tensor, ts: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The deterministic fake network of the loop cases (also defined in the tests)."""
    reps = a.shape[0] // x.shape[1]
    return torch.tanh(a * torch.cat([x] * reps, dim=1) + (ts.float() / 1000.0).view(-1, 1, 1, 1) * b)


def loop_cond(x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The deterministic fake classifier gradient of the guided loop cases (also in the tests)."""
    return -0.3 * x * (1.0 + ts.float() / 1000.0).view(-1, 1, 1, 1)


@contextlib.contextmanager
def noise_from(draw):
    original = torch.randn_like
    torch.randn_like = lambda x, *args, **kwargs: draw(x)
    try:
        yield
    finally:
        torch.randn_like = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guided_diffusion", type=Path, help="checkout of openai/guided-diffusion")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("golden.npz"))
    args = parser.parse_args()
    sys.path.insert(0, str(args.guided_diffusion.resolve()))
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion.respace import SpacedDiffusion, space_timesteps

    var_enum = {
        "fixed_small": gd.ModelVarType.FIXED_SMALL,
        "fixed_large": gd.ModelVarType.FIXED_LARGE,
        "learned_range": gd.ModelVarType.LEARNED_RANGE,
        "learned": gd.ModelVarType.LEARNED,
    }
    mean_enum = {"epsilon": gd.ModelMeanType.EPSILON, "x0": gd.ModelMeanType.START_X}

    def diffusion(schedule, steps, spec, var_type="fixed_small", mean_type="epsilon", rescale=False):
        return SpacedDiffusion(
            use_timesteps=space_timesteps(steps, spec or [steps]),
            betas=gd.get_named_beta_schedule(schedule, steps),
            model_mean_type=mean_enum[mean_type],
            model_var_type=var_enum[var_type],
            loss_type=gd.LossType.MSE,
            rescale_timesteps=rescale,
        )

    out: dict[str, np.ndarray] = {}
    # --- Schedules and respacing (float64 tables, int timesteps).
    for schedule in ("linear", "cosine"):
        out[f"betas/{schedule}"] = gd.get_named_beta_schedule(schedule, 1000)
        for spec in SPECS:
            d = diffusion(schedule, 1000, spec)
            out[f"respaced/{schedule}/{spec}/timesteps"] = np.array(d.timestep_map, dtype=np.int64)
            out[f"respaced/{schedule}/{spec}/betas"] = d.betas
            out[f"respaced/{schedule}/{spec}/posterior_variance"] = d.posterior_variance
    for steps, spec in EXTRA_SPACINGS:
        out[f"space/{steps}/{spec}"] = np.array(sorted(space_timesteps(steps, spec)), dtype=np.int64)

    # --- What the network sees with rescale_timesteps (500-step process).
    t_rescale = torch.tensor([0, 1, 25, 49])
    for spec, t in (("ddim50", t_rescale), ("", torch.tensor([0, 1, 250, 499]))):
        seen = []
        d = diffusion("linear", 500, spec, rescale=True)
        d.p_mean_variance(lambda x, ts: seen.append(ts) or torch.zeros_like(x), torch.zeros(4, 1, 1, 1), t)
        out[f"rescale/linear500/{spec or 'full'}/t"] = t.numpy()
        out[f"rescale/linear500/{spec or 'full'}/model_t"] = seen[0].numpy()

    # --- One step of every (variance, mean) type, fixed inputs.
    g = torch.Generator().manual_seed(0)
    x_t = 1.2 * torch.randn(STEP_SHAPE, generator=g)
    mean_part = torch.randn(STEP_SHAPE, generator=g)
    var_part = 2 * torch.rand(STEP_SHAPE, generator=g) - 1
    model_out = torch.cat([mean_part, var_part], dim=1)
    noise = torch.randn(STEP_SHAPE, generator=g)
    grad = 0.1 * torch.randn(STEP_SHAPE, generator=g)
    x0 = torch.randint(0, 256, STEP_SHAPE, generator=g).float() / 127.5 - 1
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0  # both edge bins of the decoder likelihood
    for key, value in dict(x_t=x_t, model_out=model_out, noise=noise, grad=grad, x0=x0).items():
        out[f"step/inputs/{key}"] = value.numpy()

    cond_fn = lambda x, ts: grad  # noqa: E731
    for setting, (schedule, spec, steps) in STEP_SETTINGS.items():
        t = torch.tensor(steps)
        out[f"step/{setting}/t"] = t.numpy()
        for var_type in VAR_TYPES:
            for mean_type in MEAN_TYPES:
                d = diffusion(schedule, 1000, spec, var_type, mean_type)
                learned = var_type.startswith("learned")
                output = model_out if learned else mean_part
                model = lambda x, ts, r=output: r  # noqa: E731
                case = f"step/{setting}/{var_type}/{mean_type}"
                kw = dict(model_kwargs={})
                pmv = d.p_mean_variance(model, x_t, t, clip_denoised=True, **kw)
                for name in ("mean", "variance", "log_variance", "pred_xstart"):
                    out[f"{case}/pmv_{name}"] = pmv[name].numpy()
                raw = d.p_mean_variance(model, x_t, t, clip_denoised=False, **kw)
                out[f"{case}/pmv_noclip_mean"] = raw["mean"].numpy()
                out[f"{case}/pmv_noclip_pred_xstart"] = raw["pred_xstart"].numpy()
                with noise_from(lambda x: noise):
                    out[f"{case}/p_sample"] = d.p_sample(model, x_t, t, **kw)["sample"].numpy()
                    out[f"{case}/p_sample_guided"] = d.p_sample(model, x_t, t, cond_fn=cond_fn, **kw)["sample"].numpy()
                    out[f"{case}/ddim_eta07"] = d.ddim_sample(model, x_t, t, eta=0.7, **kw)["sample"].numpy()
                    out[f"{case}/ddim_eta1"] = d.ddim_sample(model, x_t, t, eta=1.0, **kw)["sample"].numpy()
                out[f"{case}/ddim_eta0"] = d.ddim_sample(model, x_t, t, **kw)["sample"].numpy()
                out[f"{case}/ddim_eta0_guided"] = d.ddim_sample(model, x_t, t, cond_fn=cond_fn, **kw)["sample"].numpy()
                out[f"{case}/ddim_reverse"] = d.ddim_reverse_sample(model, x_t, t, **kw)["sample"].numpy()
                out[f"{case}/condition_mean"] = d.condition_mean(cond_fn, pmv, x_t, t, **kw).numpy()
                score = d.condition_score(cond_fn, pmv, x_t, t, **kw)
                out[f"{case}/condition_score_mean"] = score["mean"].numpy()
                out[f"{case}/condition_score_pred_xstart"] = score["pred_xstart"].numpy()
                vb = d._vb_terms_bpd(model, x_start=x0, x_t=x_t, t=t, clip_denoised=False, model_kwargs={})
                out[f"{case}/vb_terms_bpd"] = vb["output"].numpy()

    # --- Whole sampling loops with a deterministic fake network.
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(LOOP_SHAPE, generator=g)
    a = torch.randn((6, *LOOP_SHAPE[2:]), generator=g)
    b = torch.randn((6, *LOOP_SHAPE[2:]), generator=g)
    out["loop/inputs/x_T"], out["loop/inputs/a"], out["loop/inputs/b"] = x_T.numpy(), a.numpy(), b.numpy()
    out["loop/inputs/seeds"] = np.array(LOOP_SEEDS, dtype=np.int64)
    for name, (schedule, spec, var_type, mean_type, sampler, eta, guided) in LOOPS.items():
        d = diffusion(schedule, 1000, spec, var_type, mean_type)
        channels = 6 if var_type.startswith("learned") else 3
        model = lambda x, ts, c=channels: loop_model(x, ts, a[:c], b[:c])  # noqa: E731
        gens = [torch.Generator().manual_seed(s) for s in LOOP_SEEDS]
        draw = lambda x: torch.stack([torch.randn(x.shape[1:], generator=gen) for gen in gens]).to(x)  # noqa: E731
        loop = d.p_sample_loop if sampler == "ddpm" else d.ddim_sample_loop
        kw = dict(eta=eta) if sampler == "ddim" else {}
        with noise_from(draw):
            sample = loop(
                model, LOOP_SHAPE, noise=x_T, cond_fn=loop_cond if guided else None, model_kwargs={}, device="cpu", **kw
            )
        out[f"loop/{name}"] = sample.numpy()

    np.savez_compressed(args.out, **out)
    print(f"wrote {len(out)} arrays to {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
