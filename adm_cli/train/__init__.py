"""Training: objectives, timestep sampling, optimisation, the loop, and the run directory."""

from adm_cli.train.classifier import ClassifierTask
from adm_cli.train.diffusion import DiffusionTask
from adm_cli.train.loop import RunOptions, TrainError, train
from adm_cli.train.objectives import classifier_terms, default_loss, diffusion_terms
from adm_cli.train.run_dir import RunDir, RunDirError
from adm_cli.train.timesteps import LossSecondMomentSampler, UniformSampler, make_timestep_sampler

__all__ = [
    "ClassifierTask",
    "DiffusionTask",
    "LossSecondMomentSampler",
    "RunDir",
    "RunDirError",
    "RunOptions",
    "TrainError",
    "UniformSampler",
    "classifier_terms",
    "default_loss",
    "diffusion_terms",
    "make_timestep_sampler",
    "train",
]
