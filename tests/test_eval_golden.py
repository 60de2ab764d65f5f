"""adm evaluate against golden values from the reference implementations themselves
(assets/golden/evaluate/: OpenAI's evaluator.py run with TensorFlow 2.21 on the CPU,
torch-fidelity 0.4.0, pytorch-fid 0.3.0; provenance and recipes in its README)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from adm_cli.evaluate.fid import fid_statistics, inception_score
from adm_cli.evaluate.inception import FIDInception
from adm_cli.evaluate.nets import InceptionFeatures
from adm_cli.evaluate.precision_recall import manifold_radii, precision_recall
from adm_cli.evaluate.resize import tf1_resize_bilinear
from tests.eval_helpers import GOLDEN, random_inception_state

sys.path.insert(0, str(GOLDEN))
import make_golden as recipes  # noqa: E402  (numpy-only input recipes; TF is imported only inside its functions)

sys.path.remove(str(GOLDEN))
G = np.load(GOLDEN / "golden.npz")


@pytest.mark.parametrize("case", list(recipes.RESIZE_CASES))
def test_resize_is_bit_exact_with_tensorflow(case):
    make, size = recipes.RESIZE_CASES[case]
    x = make()  # (N, H, W, 3) float32
    y = tf1_resize_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()
    key = f"resize/{case}"
    if f"{key}/output" in G.files:
        np.testing.assert_array_equal(y, G[f"{key}/output"])
    else:
        np.testing.assert_array_equal(y[:, ::7, ::7, :], G[f"{key}/output_sub7"])
    assert y.astype(np.float64).sum() == G[f"{key}/sum"]
    assert (y.astype(np.float64) ** 2).sum() == G[f"{key}/sumsq"]


@pytest.fixture(scope="module")
def features() -> InceptionFeatures:
    net = FIDInception()
    net.load_state_dict(random_inception_state(0), strict=False)
    return InceptionFeatures(net, "random-seed0")


@pytest.mark.parametrize("group", list(recipes.NET_IMAGES))
def test_network_matches_torch_fidelity(features, group):
    seed, n, h, w = recipes.NET_IMAGES[group]
    images = recipes.uint8_images(seed, n, h, w)
    out = features(images)
    key = f"net/{group}"
    # float32 vs float32 through 94 layers: differences are summation-order noise; the float64
    # run of the same network (pool_f64) bounds what "equal" can mean here (3e-6).
    np.testing.assert_allclose(out["pool"], G[f"{key}/tfid_pool"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(out["spatial"], G[f"{key}/tfid_spatial"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(out["pool"], G[f"{key}/pool_f64"], rtol=0, atol=2e-5)
    with torch.no_grad():
        logits = features.net.logits_unbiased(torch.from_numpy(out["pool"])).numpy()
    np.testing.assert_allclose(logits, G[f"{key}/tfid_logits_unbiased"], rtol=0, atol=2e-5)


def test_inception_score_with_tensorflows_softmax(features):
    acts = recipes.is_acts()
    probs = features.class_probabilities(acts)
    np.testing.assert_allclose(probs[:4], G["is/tf_graph/probs_first4"], rtol=1e-5, atol=1e-9)
    assert inception_score(probs) == pytest.approx(float(G["is/tf_graph/value"]), rel=1e-5)


def test_inception_score_splits():
    probs = recipes.is_probs()
    assert inception_score(probs) == float(G["is/probs/value"])
    assert inception_score(probs, split_size=4000) == float(G["is/probs/value_split_size_4000"])
    assert np.isnan(inception_score(G["is/zero_prob/probs"])) and np.isnan(G["is/zero_prob/value"])


@pytest.mark.parametrize("case", recipes.FID_CASES)
def test_fid_equals_the_evaluators(case):
    ref, sample = recipes.fid_inputs(case)
    d = fid_statistics(sample).frechet_distance(fid_statistics(ref))
    # the reference's own value under SciPy 1.17 and 1.15 (different sqrtm algorithms) agree bit for bit
    assert d == pytest.approx(float(G[f"fid/{case}/value"]), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("case", ["small", "overflow", "mixed", "duplicates"])
@pytest.mark.parametrize("block", [10000, 64])
def test_precision_recall_equal_tensorflows(case, block):
    ref, sam = recipes.pr_inputs(case)
    key = f"pr/{case}/b{block}"
    tile = min(block, 2048)
    assert precision_recall(ref, sam, block_size=block, tile=tile) == (float(G[f"{key}/precision"]), float(G[f"{key}/recall"]))
    r_ref = manifold_radii(ref, block_size=block, tile=tile)
    r_sam = manifold_radii(sam, block_size=block, tile=tile)
    if case in ("small", "duplicates"):  # float16 throughout: TF's CPU kernel reproduced bit for bit
        np.testing.assert_array_equal(r_ref, G[f"{key}/radii_ref"][:, 0])
        np.testing.assert_array_equal(r_sam, G[f"{key}/radii_sample"][:, 0])
    else:  # blocks that fall back to float32 differ only in summation order
        np.testing.assert_allclose(r_ref, G[f"{key}/radii_ref"][:, 0], rtol=1e-5)
        np.testing.assert_allclose(r_sam, G[f"{key}/radii_sample"][:, 0], rtol=1e-5)
