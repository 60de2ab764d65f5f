"""Generate the network golden values in this folder from openai/guided-diffusion.

Usage (from the repository root):

    python assets/golden/nn/make_golden.py GD_PATH

GD_PATH is a checkout of https://github.com/openai/guided-diffusion (the values were
made at commit 22e0df8183507e13a7813f8d38d51b072ca1e67c). The reference package is
imported from that path; none of its code lives in this repository.

What it does:

1. Sanity check of the config mapping: for every published configuration, the
   reference model built exactly as the reference sampling scripts build it (README
   flags -> argparse defaults -> script_util.create_model_and_diffusion /
   sr_create_model_and_diffusion / create_classifier) must have the same state-dict
   names and shapes as the reference model built from our preset
   (adm_cli.config.DIFFUSION_PRESETS / CLASSIFIER_PRESETS) through `reference_kwargs`.
   Done on the meta device, so no memory is spent.
2. For every family below (a published configuration shrunk in width and image size,
   or an extra variant covering another code path), build the reference model via
   `reference_kwargs(cfg)`, load `tests/golden_weights.deterministic_state_dict`
   (strict), run one float32 eval-mode forward on CPU on deterministic inputs, and
   write `<family>.npz`.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from adm_cli.config import (  # noqa: E402
    CLASSIFIER_PRESETS,
    DIFFUSION_PRESETS,
    ClassifierConfig,
    UNetConfig,
)


def _load_golden_weights():
    spec = importlib.util.spec_from_file_location("golden_weights", REPO / "tests" / "golden_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_weights = _load_golden_weights()

# ----------------------------------------------------------------------------------------
# Families: (name, our config). Published families keep channel_mult, num_res_blocks,
# resblock_updown, scale-shift, attention order, heads-vs-head-channels, learn_sigma and
# class conditioning; model_channels -> 32 (64 where a 0.5 multiplier needs it),
# num_head_channels 64 -> 16, num_classes 1000 -> 10, image size shrunk with the
# attention resolutions scaled to keep the same downsampling factors.
# ----------------------------------------------------------------------------------------

FAMILIES: list[tuple[str, UNetConfig | ClassifierConfig]] = [
    # 64x64 ADM-G: attention ds 2,4,8 (32,16,8 px at 64) -> 8,4,2 px at 16.
    ("imagenet64", UNetConfig(
        image_size=16, model_channels=32, num_res_blocks=3, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 2, 3, 4), dropout=0.1, num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
        attention_order="new")),
    # 128x128: num_heads 4 (no head channels); ds 4,8,16 -> 8,4,2 px at 32.
    ("imagenet128", UNetConfig(
        image_size=32, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 3, 4), num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=None, use_scale_shift_norm=True, resblock_updown=True)),
    # 256x256 conditional: ds 8,16,32 -> 8,4,2 px at 64.
    ("imagenet256", UNetConfig(
        image_size=64, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 2, 4, 4), num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)),
    # 256x256 unconditional (same network as the LSUN models; their dropout is inert in eval).
    ("imagenet256-uncond", UNetConfig(
        image_size=64, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 2, 4, 4), num_classes=None, learn_sigma=True,
        num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)),
    # 512x512: 7 levels with a 0.5 multiplier; ds 16,32,64 -> 4,2,1 px at 64 (bottom is 1x1).
    ("imagenet512", UNetConfig(
        image_size=64, model_channels=64, num_res_blocks=2, attention_resolutions=(4, 2, 1),
        channel_mult=(0.5, 1, 1, 2, 2, 4, 4), num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)),
    # 64 -> 256 upsampler (SuperResModel): num_heads 4; ds 8,16,32 -> 8,4,2 px at 64; x4 ratio kept.
    ("upsample64-256", UNetConfig(
        image_size=64, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 2, 4, 4), num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=None, use_scale_shift_norm=True, resblock_updown=True,
        low_res_size=16)),
    # 128 -> 512 upsampler: attention 32,16 px at 512 = ds 16,32 -> 4,2 px at 64; head channels.
    ("upsample128-512", UNetConfig(
        image_size=64, model_channels=32, num_res_blocks=2, attention_resolutions=(4, 2),
        channel_mult=(1, 1, 2, 2, 4, 4), num_classes=10, learn_sigma=True,
        num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
        low_res_size=16)),
    # Extra: conv Downsample/Upsample, no scale-shift, dropout (inert in eval),
    # num_heads_upsample != num_heads, fixed variance (3 output channels), unconditional.
    ("unet-conv-resample", UNetConfig(
        image_size=32, model_channels=32, num_res_blocks=2, attention_resolutions=(16, 8),
        channel_mult=(1, 2, 2), dropout=0.3, num_classes=None, learn_sigma=False,
        num_heads=4, num_head_channels=None, num_heads_upsample=2,
        use_scale_shift_norm=False, resblock_updown=False, attention_order="legacy")),
    # Extra: 'new' attention order with num_heads (not head channels) and
    # num_heads_upsample != num_heads, attention at full resolution, one block per level.
    ("unet-new-order-heads", UNetConfig(
        image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(16, 8),
        channel_mult=(1, 2), num_classes=10, learn_sigma=True,
        num_heads=2, num_head_channels=None, num_heads_upsample=4,
        use_scale_shift_norm=True, resblock_updown=False, attention_order="new")),
    # Classifiers (create_classifier: num_heads 1, head channels 64 -> 16, legacy order).
    ("classifier64", ClassifierConfig(
        image_size=16, model_channels=32, num_res_blocks=4, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 2, 3, 4), num_classes=10, num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention")),
    ("classifier128", ClassifierConfig(
        image_size=32, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 3, 4), num_classes=10, num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention")),
    ("classifier256", ClassifierConfig(
        image_size=64, model_channels=32, num_res_blocks=2, attention_resolutions=(8, 4, 2),
        channel_mult=(1, 1, 2, 2, 4, 4), num_classes=10, num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention")),
    ("classifier512", ClassifierConfig(
        image_size=64, model_channels=64, num_res_blocks=2, attention_resolutions=(4, 2, 1),
        channel_mult=(0.5, 1, 1, 2, 2, 4, 4), num_classes=10, num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention")),
    # Extra classifier heads / paths.
    ("classifier-adaptive", ClassifierConfig(
        image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
        channel_mult=(1, 2, 2), num_classes=10, num_heads=2, num_head_channels=None,
        use_scale_shift_norm=False, resblock_updown=False, attention_order="new", pool="adaptive")),
    ("classifier-spatial", ClassifierConfig(
        image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8, 4),
        channel_mult=(1, 2, 3, 4), num_classes=10, num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, pool="spatial")),
    ("classifier-spatial_v2", ClassifierConfig(
        image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8, 4),
        channel_mult=(1, 2, 2), num_classes=10, num_heads=4, num_head_channels=None,
        use_scale_shift_norm=False, resblock_updown=False, attention_order="legacy",
        pool="spatial_v2")),
]

# Published configurations: our preset name -> the README's flags (the classifier flags
# add classifier_sample.py's classifier options to the defaults).
PUBLISHED_MODEL_FLAGS = {
    "imagenet64": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
    "imagenet128": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "imagenet256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "imagenet256-uncond": "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "imagenet512": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",
    "lsun": "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "upsample64-256": "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256  --small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
    "upsample128-512": "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
}
PUBLISHED_CLASSIFIER_FLAGS = {
    "imagenet64": "--image_size 64 --classifier_depth 4",
    "imagenet128": "--image_size 128 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 --classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True",
    "imagenet256": "--image_size 256",
    "imagenet512": "--image_size 512",
}


def _mult(m: float) -> float | int:
    return int(m) if float(m).is_integer() else float(m)


def reference_kwargs(cfg: UNetConfig | ClassifierConfig) -> dict:
    """Constructor arguments of the reference UNetModel / SuperResModel / EncoderUNetModel
    for one of our configs (the mapping script_util applies to its flags)."""
    common = dict(
        image_size=cfg.image_size,
        in_channels=cfg.in_channels,  # SuperResModel doubles it itself
        model_channels=cfg.model_channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=tuple(cfg.image_size // r for r in cfg.attention_resolutions),
        dropout=cfg.dropout,
        channel_mult=tuple(_mult(m) for m in cfg.channel_mult),
        use_fp16=False,
        num_heads=cfg.num_heads,
        num_head_channels=-1 if cfg.num_head_channels is None else cfg.num_head_channels,
        use_scale_shift_norm=cfg.use_scale_shift_norm,
        resblock_updown=cfg.resblock_updown,
        use_new_attention_order=cfg.attention_order == "new",
    )
    if isinstance(cfg, ClassifierConfig):
        return dict(common, out_channels=cfg.num_classes, pool=cfg.pool)
    return dict(
        common,
        out_channels=cfg.in_channels * (2 if cfg.learn_sigma else 1),
        num_classes=cfg.num_classes,
        num_heads_upsample=-1 if cfg.num_heads_upsample is None else cfg.num_heads_upsample,
    )


def build_reference(unet_mod, cfg):
    kwargs = reference_kwargs(cfg)
    if isinstance(cfg, ClassifierConfig):
        return unet_mod.EncoderUNetModel(**kwargs)
    if cfg.is_super_res:
        return unet_mod.SuperResModel(**kwargs)
    return unet_mod.UNetModel(**kwargs)


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_published(script_util, unet_mod) -> None:
    """Our presets through reference_kwargs == the reference scripts' own construction."""

    def parse(defaults, flags):
        parser = argparse.ArgumentParser()
        script_util.add_dict_to_argparser(parser, defaults)
        return parser.parse_args(shlex.split(flags))

    with torch.device("meta"):
        for name, flags in PUBLISHED_MODEL_FLAGS.items():
            ours = build_reference(unet_mod, DIFFUSION_PRESETS[name].unet)
            if "--large_size" in flags:
                defaults = script_util.sr_model_and_diffusion_defaults()
                args = parse(defaults, flags)
                ref, _ = script_util.sr_create_model_and_diffusion(
                    **script_util.args_to_dict(args, defaults.keys()))
            else:
                defaults = script_util.model_and_diffusion_defaults()
                args = parse(defaults, flags)
                ref, _ = script_util.create_model_and_diffusion(
                    **script_util.args_to_dict(args, defaults.keys()))
            assert type(ref) is type(ours), (name, type(ref), type(ours))
            assert _shapes(ref) == _shapes(ours), f"preset {name}: shapes differ from the reference"
            print(f"  preset {name:20s} matches reference ({len(_shapes(ref))} tensors)")
        for name, flags in PUBLISHED_CLASSIFIER_FLAGS.items():
            ours = build_reference(unet_mod, CLASSIFIER_PRESETS[name])
            defaults = script_util.classifier_defaults()
            args = parse(defaults, flags)
            ref = script_util.create_classifier(**script_util.args_to_dict(args, defaults.keys()))
            assert _shapes(ref) == _shapes(ours), f"classifier {name}: shapes differ from the reference"
            print(f"  classifier {name:16s} matches reference ({len(_shapes(ref))} tensors)")


def make_family(unet_mod, name: str, cfg) -> dict:
    model = build_reference(unet_mod, cfg).float()
    shapes = _shapes(model)
    model.load_state_dict(golden_weights.deterministic_state_dict(shapes), strict=True)
    model.eval()

    x = torch.randn((2, cfg.in_channels, cfg.image_size, cfg.image_size),
                    generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    t = torch.tensor([3, 517], dtype=torch.int64)
    arrays = {"x": x.numpy(), "t": t.numpy()}
    kwargs = {}
    is_unet = isinstance(cfg, UNetConfig)
    if is_unet and cfg.num_classes is not None:
        y = torch.tensor([1, 7], dtype=torch.int64)
        kwargs["y"] = y
        arrays["y"] = y.numpy()
    if is_unet and cfg.is_super_res:
        low_res = torch.randn((2, cfg.in_channels, cfg.low_res_size, cfg.low_res_size),
                              generator=torch.Generator().manual_seed(1), dtype=torch.float32)
        kwargs["low_res"] = low_res
        arrays["low_res"] = low_res.numpy()

    start = time.perf_counter()
    with torch.no_grad():
        out = model(x, t, **kwargs)
    elapsed = time.perf_counter() - start
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
    expected = (2, cfg.out_channels, cfg.image_size, cfg.image_size) if is_unet else (2, cfg.num_classes)
    assert tuple(out.shape) == expected, (name, tuple(out.shape), expected)

    config = dict(cfg.to_dict(), kind="unet" if is_unet else "classifier")
    # Round-trip check: the stored dict rebuilds the same config.
    cls = UNetConfig if is_unet else ClassifierConfig
    assert cls.from_dict({k: v for k, v in config.items() if k != "kind"}) == cfg

    arrays.update(
        out=out.numpy().astype(np.float32),
        config_json=np.array(json.dumps(config, sort_keys=True)),
        param_names=np.array(list(shapes.keys())),
        param_shapes_json=np.array(json.dumps({k: list(v) for k, v in shapes.items()})),
        reference_class=np.array(type(model).__name__),
        reference_kwargs_json=np.array(json.dumps(reference_kwargs(cfg), sort_keys=True)),
    )
    path = HERE / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    print(f"  {name:22s} {type(model).__name__:16s} params={n_params:>9d} out={tuple(out.shape)} "
          f"forward={elapsed:.2f}s file={path.stat().st_size / 1024:.0f} KiB")
    assert elapsed < 2.0, f"{name}: forward took {elapsed:.2f}s"
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gd_path", type=Path, help="checkout of openai/guided-diffusion")
    args = parser.parse_args()
    sys.path.insert(0, str(args.gd_path.resolve()))
    from guided_diffusion import script_util, unet as unet_mod

    torch.manual_seed(0)  # nothing below draws from the global generator; belt and braces
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print("checking our presets against the reference scripts' construction:")
    check_published(script_util, unet_mod)
    print("writing golden files:")
    for name, cfg in FAMILIES:
        make_family(unet_mod, name, cfg)
    total = sum(p.stat().st_size for p in HERE.glob("*.npz"))
    print(f"total {total / 1024:.0f} KiB in {len(FAMILIES)} files")


if __name__ == "__main__":
    main()
