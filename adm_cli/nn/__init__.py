"""Networks: the ADM UNet, its super-resolution variant and the noise-aware classifier."""

from adm_cli.nn.classifier import NoisyClassifier
from adm_cli.nn.unet import SuperResUNet, UNet, build_unet

__all__ = ["NoisyClassifier", "SuperResUNet", "UNet", "build_unet"]
