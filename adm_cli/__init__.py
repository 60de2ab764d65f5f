"""adm: the system of *Diffusion Models Beat GANs on Image Synthesis* (Dhariwal & Nichol 2021).

Public API:

    import adm_cli as adm
    model = adm.load_model("256x256_diffusion.pt")          # adm or guided-diffusion checkpoint
    clf = adm.load_model("256x256_classifier.pt")
    x0, labels = adm.sample_images(model, 8, sampler="ddim", respacing="ddim25",
                                   classifier=clf, guidance_scale=1.0, seed=0)
    mine = adm.load_model("runs/pets")                     # a training run: its newest checkpoint

Training is `adm_cli.train` (objectives, timestep samplers, the loop); the commands are
`adm train-diffusion` / `adm train-classifier`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from adm_cli.version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from adm_cli.backend import make_backend
    from adm_cli.checkpoint import load_model
    from adm_cli.generate import SampleOptions, run_sampling, sample_images

__all__ = ["SampleOptions", "load_model", "make_backend", "run_sampling", "sample_images", "__version__"]

# The public names and the modules that define them.  Imported lazily (PEP 562) so that
# importing a submodule such as `adm_cli.config` does not load torch and the whole package.
_LAZY = {
    "make_backend": "adm_cli.backend",
    "load_model": "adm_cli.checkpoint",
    "SampleOptions": "adm_cli.generate",
    "run_sampling": "adm_cli.generate",
    "sample_images": "adm_cli.generate",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
