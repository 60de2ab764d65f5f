"""Regenerate center_crop.npz: guided-diffusion's `image_datasets.center_crop_arr` applied to
seeded random images.   python assets/golden/images/make_golden.py /path/to/guided-diffusion"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image

spec = importlib.util.spec_from_file_location("image_datasets", Path(sys.argv[1]) / "guided_diffusion" / "image_datasets.py")
# image_datasets imports mpi4py and blobfile at the top; neither is needed for center_crop_arr.
for name in ("mpi4py", "blobfile"):
    sys.modules.setdefault(name, type(sys)(name))
sys.modules["mpi4py"].MPI = None
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

out = {}
rng = np.random.default_rng(0)
for w, h in [(100, 70), (33, 64), (16, 16), (300, 200)]:
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    out[f"in_{w}x{h}"] = arr
    out[f"out_{w}x{h}"] = module.center_crop_arr(Image.fromarray(arr), 16)
np.savez_compressed(Path(__file__).with_name("center_crop.npz"), **out)
print(sorted(out))
