"""Regenerate shapes.json.gz: parameter names and shapes of every checkpoint guided-diffusion
publishes, built (on the meta device, no weights) by the reference code's own constructors with
the flags of its README.

    python assets/golden/openai/make_shapes.py /path/to/guided-diffusion

Used by tests/test_checkpoint.py to check that adm reads each published structure from the
shapes alone, without the multi-GB files.
"""

import gzip
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, sys.argv[1])
from guided_diffusion import script_util as su  # noqa: E402

COMMON = dict(attention_resolutions="32,16,8", diffusion_steps=1000, learn_sigma=True, num_res_blocks=2,
              resblock_updown=True, use_fp16=False, use_scale_shift_norm=True)
MODELS = {
    "64x64_diffusion.pt": dict(COMMON, class_cond=True, image_size=64, noise_schedule="cosine", num_channels=192,
                               num_head_channels=64, num_res_blocks=3, use_new_attention_order=True, dropout=0.1),
    "128x128_diffusion.pt": dict(COMMON, class_cond=True, image_size=128, num_channels=256, num_heads=4),
    "256x256_diffusion.pt": dict(COMMON, class_cond=True, image_size=256, num_channels=256, num_head_channels=64),
    "256x256_diffusion_uncond.pt": dict(COMMON, class_cond=False, image_size=256, num_channels=256, num_head_channels=64),
    "512x512_diffusion.pt": dict(COMMON, class_cond=True, image_size=512, num_channels=256, num_head_channels=64),
    "lsun_bedroom.pt": dict(COMMON, class_cond=False, image_size=256, num_channels=256, num_head_channels=64, dropout=0.1),
}
UPSAMPLERS = {
    "64_256_upsampler.pt": dict(COMMON, class_cond=True, large_size=256, small_size=64, num_channels=192, num_heads=4),
    "128_512_upsampler.pt": dict(COMMON, attention_resolutions="32,16", class_cond=True, large_size=512, small_size=128,
                                 num_channels=192, num_head_channels=64),
}
CLASSIFIERS = {"64x64_classifier.pt": (64, 4), "128x128_classifier.pt": (128, 2),
               "256x256_classifier.pt": (256, 2), "512x512_classifier.pt": (512, 2)}


def args_for(fn, defaults, flags):
    merged = {**defaults, **flags}
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return {k: merged[k] for k in names if k in merged}


out = {}
with torch.device("meta"):
    for name, flags in MODELS.items():
        args = args_for(su.create_model, su.model_and_diffusion_defaults(), flags)
        out[name] = su.create_model(**args).state_dict()
    for name, flags in UPSAMPLERS.items():
        args = args_for(su.sr_create_model, su.sr_model_and_diffusion_defaults(), flags)
        out[name] = su.sr_create_model(**args).state_dict()
    for name, (size, depth) in CLASSIFIERS.items():
        out[name] = su.create_classifier(
            image_size=size, classifier_use_fp16=False, classifier_width=128, classifier_depth=depth,
            classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
            classifier_resblock_updown=True, classifier_pool="attention").state_dict()
shapes = {name: {k: list(v.shape) for k, v in sd.items()} for name, sd in out.items()}
with gzip.open(Path(__file__).with_name("shapes.json.gz"), "wt") as f:
    json.dump(shapes, f)
print({k: len(v) for k, v in shapes.items()})
