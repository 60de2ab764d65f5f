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

from adm_cli.version import __version__  # noqa: E402

from adm_cli.backend import make_backend  # noqa: E402
from adm_cli.checkpoint import load_model  # noqa: E402
from adm_cli.generate import SampleOptions, run_sampling, sample_images  # noqa: E402

__all__ = ["SampleOptions", "load_model", "make_backend", "run_sampling", "sample_images", "__version__"]
