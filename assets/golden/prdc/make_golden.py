"""Regenerate golden.json: density and coverage from the prdc package's own code (see README.md).

    python make_golden.py --prdc /tmp/prdc/unpacked/prdc/prdc.py [--out golden.json]

Needs numpy and scikit-learn (prdc's only imports). The inputs are rebuilt from the recipes in
CASES by `make_inputs`, which tests/test_eval_density_coverage.py imports (numpy only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import platform
from pathlib import Path

import numpy as np

# name: (seed, n_real, n_fake, dim, kind of fake set, k)
CASES = {
    "same": (0, 200, 150, 16, "same", 5),
    "same_k3": (0, 200, 150, 16, "same", 3),
    "shifted": (1, 200, 150, 16, "shift", 5),
    "tight": (2, 200, 150, 16, "tight", 5),  # fakes bunched near the real mode: density > 1
    "wide": (3, 200, 150, 16, "wide", 5),
    "few_fakes": (4, 200, 3, 16, "same", 5),  # fewer fakes than k
    "far": (5, 200, 150, 16, "far", 5),
    "relu64": (6, 300, 250, 64, "relu", 5),  # non-negative with exact zeros, like pool_3 features
}


def make_inputs(seed: int, n_real: int, n_fake: int, dim: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(real, fake) float32 features: normal real points, fakes per ``kind``."""
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n_real, dim))
    fake = rng.standard_normal((n_fake, dim))
    if kind == "shift":
        fake = fake + 0.5
    elif kind == "tight":
        fake = 0.3 * fake
    elif kind == "wide":
        fake = 2.0 * fake
    elif kind == "far":
        fake = fake + 100.0
    elif kind == "relu":
        real, fake = np.maximum(real + 0.3, 0), np.maximum(fake + 0.5, 0)
    elif kind != "same":
        raise ValueError(kind)
    return real.astype(np.float32), fake.astype(np.float32)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("prdc_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _density_coverage(prdc, real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    if len(fake) > k + 1:  # compute_prdc also builds the fakes' own radii, which need M > k + 1
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the counts
            out = prdc.compute_prdc(real, fake, k)
        return float(out["density"]), float(out["coverage"])
    # fewer fakes (compute_prdc refuses them): prdc's own distance functions, then the paper's two
    # definitions in compute_prdc's order of operations
    real_nearest_neighbour_distances = prdc.compute_nearest_neighbour_distances(real, k)
    distance_real_fake = prdc.compute_pairwise_distance(real, fake)
    density = (1. / float(k)) * (distance_real_fake < np.expand_dims(real_nearest_neighbour_distances, axis=1)).sum(axis=0).mean()
    coverage = (distance_real_fake.min(axis=1) < real_nearest_neighbour_distances).mean()
    return float(density), float(coverage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prdc", type=Path, required=True, help="prdc/prdc.py from the prdc package")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("golden.json"))
    args = ap.parse_args()
    prdc = _load(args.prdc)
    import sklearn

    cases = {}
    for name, (seed, n_real, n_fake, dim, kind, k) in CASES.items():
        real, fake = make_inputs(seed, n_real, n_fake, dim, kind)
        density, coverage = _density_coverage(prdc, real, fake, k)
        # the same in float64: prdc's distances are float32-rounded for float32 inputs; the
        # decisions must not depend on it, or the case is too close to a tie to be golden
        d64, c64 = _density_coverage(prdc, real.astype(np.float64), fake.astype(np.float64), k)
        assert (d64, c64) == (density, coverage), (name, density, d64, coverage, c64)
        cases[name] = {
            "seed": seed, "n_real": n_real, "n_fake": n_fake, "dim": dim, "kind": kind, "k": k,
            "density": density, "coverage": coverage,
        }
        print(f"{name:10s} density {density!r:22s} coverage {coverage!r}")
    record = {
        "source": "prdc 0.2 (PyPI wheel prdc-0.2-py3-none-any.whl), prdc/prdc.py",
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__},
        "date": datetime.date.today().isoformat(),
        "cases": cases,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
