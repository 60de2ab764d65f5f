"""Regenerate golden.npz (training objectives) from the reference implementation (openai/guided-diffusion).

    python assets/golden/train/make_golden.py /path/to/guided-diffusion [--out golden.npz]

This script is ours; it only *calls* guided-diffusion (gaussian_diffusion.py: GaussianDiffusion.training_losses
and q_sample; unet.py: UNetModel; resample.py: LossSecondMomentResampler; nn.py: update_ema) on fixed inputs and
stores inputs and outputs. tests/test_train_golden.py feeds the same inputs to adm_cli.train and compares.
Key names: "<group>/<case>/<name>".

Groups:
  objective/<case>/...  training_losses with a fake network returning a fixed leaf tensor; per-image terms and
                        d(loss.sum())/d(output), which checks the stop-gradient on the mean in the VLB term.
  unet/...              training_losses of a small reference UNetModel (deterministic weights, see
                        tests/golden_weights.py), hybrid loss; per-image terms and gradients of loss.mean().
  sampler/...           LossSecondMomentResampler (20 steps) fed a fixed sequence of (t, loss) batches.
  ema/...               update_ema at rates 0.9999 and 0.5.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# case: (schedule, steps, var_type, mean_type, reference loss type, our loss)
OBJECTIVES = {
    "linear1000_learned_range_eps_mse": ("linear", 1000, "learned_range", "epsilon", "MSE", "hybrid"),
    "linear100_learned_range_eps_rescaled_mse": ("linear", 100, "learned_range", "epsilon", "RESCALED_MSE", "hybrid"),
    "cosine1000_learned_range_eps_kl": ("cosine", 1000, "learned_range", "epsilon", "KL", "kl"),
    "linear1000_fixed_small_eps_mse": ("linear", 1000, "fixed_small", "epsilon", "MSE", "simple"),
    "cosine1000_fixed_large_x0_mse": ("cosine", 1000, "fixed_large", "x0", "MSE", "simple"),
    "linear1000_learned_eps_rescaled_mse": ("linear", 1000, "learned", "epsilon", "RESCALED_MSE", "hybrid"),
}
OBJECTIVE_SHAPE = (6, 3, 4, 4)

# The network case: reference UNetModel constructor arguments (attention_resolutions are downsampling
# factors there: 16 px / 8 px = 2). Ours: UNetConfig(image_size=16, model_channels=32, num_res_blocks=1,
# attention_resolutions=(8,), channel_mult=(1, 2), num_classes=4, learn_sigma=True, num_heads=4,
# num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True), see the test.
UNET_KWARGS = {
    "image_size": 16,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 6,
    "num_res_blocks": 1,
    "attention_resolutions": (2,),
    "dropout": 0.0,
    "channel_mult": (1, 2),
    "num_classes": 4,
    "use_checkpoint": False,
    "use_fp16": False,
    "num_heads": 4,
    "num_head_channels": 16,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
}
UNET_BATCH = 4
UNET_GRAD_PARAMS = ("out.2.weight", "input_blocks.0.0.weight", "label_emb.weight", "input_blocks.3.1.qkv.weight")

SAMPLER_STEPS = 20
SAMPLER_BATCHES = 56
SAMPLER_BATCH = 8


def timesteps_for(steps: int) -> torch.Tensor:
    """0, 1, the middle, T-1 and two more."""
    return torch.tensor([0, 1, steps // 2, steps - 1, round(0.137 * steps), round(0.742 * steps)], dtype=torch.int64)


def quantized_images(shape, generator: torch.Generator) -> torch.Tensor:
    """8-bit images scaled to [-1, 1], with both edge values present."""
    x = torch.randint(0, 256, shape, generator=generator).float() / 127.5 - 1
    x.view(-1)[0], x.view(-1)[1] = -1.0, 1.0
    return x


def load_golden_weights():
    spec = importlib.util.spec_from_file_location("golden_weights", REPO / "tests" / "golden_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def numpy_int_alias():
    """resample.py uses np.int (removed in numpy 1.24); alias it to int while the reference runs."""
    had = "int" in np.__dict__
    if not had:
        np.int = int  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not had:
            del np.int  # type: ignore[attr-defined]


@contextlib.contextmanager
def choice_returns(indices: np.ndarray):
    """Make np.random.choice return `indices`, to read the importance weights ScheduleSampler.sample computes."""
    original = np.random.choice
    np.random.choice = lambda n, size=None, p=None: indices  # type: ignore[assignment]
    try:
        yield
    finally:
        np.random.choice = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guided_diffusion", type=Path, help="checkout of openai/guided-diffusion")
    parser.add_argument("--out", type=Path, default=HERE / "golden.npz")
    args = parser.parse_args()
    sys.path.insert(0, str(args.guided_diffusion.resolve()))
    from guided_diffusion import gaussian_diffusion as gd
    from guided_diffusion import nn as gd_nn
    from guided_diffusion import resample, unet

    torch.manual_seed(0)  # nothing below draws from the global generator; belt and braces
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    var_enum = {
        "fixed_small": gd.ModelVarType.FIXED_SMALL,
        "fixed_large": gd.ModelVarType.FIXED_LARGE,
        "learned_range": gd.ModelVarType.LEARNED_RANGE,
        "learned": gd.ModelVarType.LEARNED,
    }
    mean_enum = {"epsilon": gd.ModelMeanType.EPSILON, "x0": gd.ModelMeanType.START_X}

    def diffusion(schedule, steps, var_type, mean_type, loss_type):
        return gd.GaussianDiffusion(
            betas=gd.get_named_beta_schedule(schedule, steps),
            model_mean_type=mean_enum[mean_type],
            model_var_type=var_enum[var_type],
            loss_type=gd.LossType[loss_type],
            rescale_timesteps=False,
        )

    out: dict[str, np.ndarray] = {}

    # --- (a) Objectives with a fake network returning a fixed leaf tensor.
    g = torch.Generator().manual_seed(0)
    x_start = quantized_images(OBJECTIVE_SHAPE, g)
    noise = torch.randn(OBJECTIVE_SHAPE, generator=g)
    mean_part = torch.randn(OBJECTIVE_SHAPE, generator=g)
    var_u = 2 * torch.rand(OBJECTIVE_SHAPE, generator=g) - 1  # learned_range: v in [-1, 1]
    out["objective/inputs/x_start"] = x_start.numpy()
    out["objective/inputs/noise"] = noise.numpy()
    for case, (schedule, steps, var_type, mean_type, loss_type, ours) in OBJECTIVES.items():
        d = diffusion(schedule, steps, var_type, mean_type, loss_type)
        t = timesteps_for(steps)
        if var_type == "learned_range":
            fixed = torch.cat([mean_part, var_u], dim=1)
        elif var_type == "learned":  # log-variances around the schedule's range
            fixed = torch.cat([mean_part, -6.0 + 2.5 * var_u], dim=1)
        else:
            fixed = mean_part.clone()
        fixed.requires_grad_(True)
        seen: list[torch.Tensor] = []

        def model(x, ts, r=fixed, seen=seen):
            seen.append(x.detach().clone())
            return r

        terms = d.training_losses(model, x_start, t, noise=noise)
        terms["loss"].sum().backward()
        key = f"objective/{case}"
        out[f"{key}/t"] = t.numpy()
        out[f"{key}/model_output"] = fixed.detach().numpy()
        out[f"{key}/x_t"] = seen[0].numpy()
        out[f"{key}/our_loss"] = np.array(ours)
        out[f"{key}/reference_loss_type"] = np.array(loss_type)
        for name, value in terms.items():
            out[f"{key}/{name}"] = value.detach().numpy()
        out[f"{key}/grad_output"] = fixed.grad.numpy()
        print(f"  objective {case:44s} terms={sorted(terms)} loss={terms['loss'].detach().numpy().round(4)}")

    # --- (b) A small reference UNet, hybrid loss (linear 1000, learned_range, MSE = RESCALED_MSE at T = 1000).
    golden_weights = load_golden_weights()
    net = unet.UNetModel(**UNET_KWARGS).float()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(golden_weights.deterministic_state_dict(shapes), strict=True)
    net.train()  # dropout 0: same as eval
    assert set(UNET_GRAD_PARAMS) <= set(shapes), sorted(shapes)
    d = diffusion("linear", 1000, "learned_range", "epsilon", "MSE")
    shape = (UNET_BATCH, 3, UNET_KWARGS["image_size"], UNET_KWARGS["image_size"])
    g = torch.Generator().manual_seed(1)
    x_start = quantized_images(shape, g)
    noise = torch.randn(shape, generator=g)
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    y = torch.tensor([0, 3, 1, 2], dtype=torch.int64)
    outputs = []

    def traced(x, ts, **kw):
        result = net(x, ts, **kw)
        outputs.append(result.detach().clone())
        return result

    terms = d.training_losses(traced, x_start, t, model_kwargs={"y": y}, noise=noise)
    terms["loss"].mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(net.parameters())), "every parameter gets a gradient"
    out["unet/reference_kwargs_json"] = np.array(json.dumps(UNET_KWARGS, sort_keys=True))
    out["unet/param_shapes_json"] = np.array(json.dumps({k: list(v) for k, v in shapes.items()}))
    out["unet/x_start"], out["unet/noise"] = x_start.numpy(), noise.numpy()
    out["unet/t"], out["unet/y"] = t.numpy(), y.numpy()
    out["unet/x_t"] = d.q_sample(x_start, t, noise=noise).numpy()
    out["unet/model_output"] = outputs[0].numpy()
    for name, value in terms.items():
        out[f"unet/{name}"] = value.detach().numpy()
    out["unet/grad_names"] = np.array(UNET_GRAD_PARAMS)
    for name in UNET_GRAD_PARAMS:
        out[f"unet/grad/{name}"] = grads[name].numpy()
    out["unet/grad_norm"] = np.array(np.sqrt(sum(float((gr.double() ** 2).sum()) for gr in grads.values())))
    print(
        f"  unet terms={sorted(terms)} loss={terms['loss'].detach().numpy().round(4)} "
        f"grad_norm={float(out['unet/grad_norm']):.6f}"
    )

    # --- (c) The loss-aware timestep sampler, 20 steps, history 10.
    rs = np.random.RandomState(0)
    batches_t, batches_loss = [], []
    for i in range(SAMPLER_BATCHES):
        if i == 5:  # one t repeated past its history inside a single batch
            ts = np.full(SAMPLER_BATCH, 3, dtype=np.int64)
            ts[-2:] = [0, SAMPLER_STEPS - 1]
        else:
            ts = rs.randint(0, SAMPLER_STEPS, size=SAMPLER_BATCH).astype(np.int64)
        scale = 0.05 + 0.02 * ts + 0.5 * (ts == 7)  # non-uniform second moments
        losses = (scale * np.abs(rs.standard_normal(SAMPLER_BATCH) + 1.0)).astype(np.float32)
        batches_t.append(ts)
        batches_loss.append(losses)
    with numpy_int_alias():
        sampler = resample.LossSecondMomentResampler(
            diffusion("cosine", SAMPLER_STEPS, "fixed_small", "epsilon", "MSE")
        )
    weights, warmed, importance = [], [], []
    for ts, losses in zip(batches_t, batches_loss):
        # update_with_local_losses hands over ints and Python floats (.item() of the float32 losses).
        sampler.update_with_all_losses([int(v) for v in ts], [float(v) for v in losses])
        weights.append(sampler.weights().astype(np.float64))
        warmed.append(bool(sampler._warmed_up()))
        with choice_returns(np.arange(SAMPLER_STEPS)):
            _, iw = sampler.sample(SAMPLER_STEPS, "cpu")
        importance.append(iw.numpy())
    warmed_arr = np.array(warmed)
    first = int(np.argmax(warmed_arr))
    assert warmed_arr[first] and 0 < first < SAMPLER_BATCHES - 5 and warmed_arr[first:].all(), warmed
    assert (sampler._loss_counts == 10).all()
    out["sampler/t"] = np.stack(batches_t)
    out["sampler/losses"] = np.stack(batches_loss)
    out["sampler/weights"] = np.stack(weights)  # raw weights() after each batch (un-normalised before warm-up)
    out["sampler/warmed_up"] = warmed_arr
    out["sampler/importance_weights"] = np.stack(importance)  # sample()'s 1 / (T p_t) for t = 0..T-1, float32
    print(f"  sampler warmed up after batch {first} of {SAMPLER_BATCHES}")

    # --- (d) EMA.
    g = torch.Generator().manual_seed(2)
    ema = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    for i, (e, p) in enumerate(zip(ema, params)):
        out[f"ema/inputs/ema{i}"], out[f"ema/inputs/param{i}"] = e.numpy(), p.numpy()
    for rate in (0.9999, 0.5):
        targets = [e.clone() for e in ema]
        gd_nn.update_ema(targets, params, rate=rate)
        for i, target in enumerate(targets):
            out[f"ema/{rate}/{i}"] = target.numpy()

    np.savez_compressed(args.out, **out)
    print(f"wrote {len(out)} arrays to {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
