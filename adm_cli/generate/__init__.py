"""Generation: from a loaded model to images, in memory or streamed into resumable sample files.

    options     sampler names, step counts / network evaluations, `SampleOptions`
    denoise     compatibility checks, the schedule, seeded initial state and labels, `build_denoiser` (the one
                place a network, classifier, labels and guidance become a `diffusion.Denoiser`),
                `run_sampler`, `sample_batch`
    stream      the resumable chunk loop shared by sampling and upsampling (torchrun aware)
    sampling    `run_sampling` (adm sample) and `sample_images` (the Python API)
    upsample    `run_upsampling` (adm upsample)
    interpolate DDIM inversion and latent interpolation (adm interpolate)
"""

from adm_cli.generate.denoise import (
    balanced_labels,
    build_denoiser,
    check_compatible,
    initial_state,
    network_fn,
    num_label_classes,
    run_sampler,
    sample_batch,
    sampling_schedule,
)
from adm_cli.generate.options import (
    CLASS_MODES,
    DEFAULT_SOLVER_NFE,
    MIN_NFE,
    ODE_SOLVERS,
    SAMPLERS,
    ClassMode,
    GenerateError,
    Sampler,
    SampleOptions,
    ddim_spacing,
    default_spacing,
    describe_steps,
    nfe_of,
    steps_for_nfe,
)
from adm_cli.generate.sampling import fingerprint, run_sampling, sample_images
from adm_cli.generate.stream import stream_samples

__all__ = [
    "CLASS_MODES",
    "DEFAULT_SOLVER_NFE",
    "MIN_NFE",
    "ODE_SOLVERS",
    "SAMPLERS",
    "ClassMode",
    "GenerateError",
    "SampleOptions",
    "Sampler",
    "balanced_labels",
    "build_denoiser",
    "check_compatible",
    "ddim_spacing",
    "default_spacing",
    "describe_steps",
    "fingerprint",
    "initial_state",
    "network_fn",
    "nfe_of",
    "num_label_classes",
    "run_sampler",
    "run_sampling",
    "sample_batch",
    "sample_images",
    "sampling_schedule",
    "steps_for_nfe",
    "stream_samples",
]
