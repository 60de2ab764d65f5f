"""Golden values for `adm evaluate`, computed by the reference implementations themselves.

Runs OUTSIDE the project (needs TensorFlow, torch-fidelity, pytorch-fid and a checkout of
openai/guided-diffusion); the project's tests only read `golden.npz` and import `random_weights.py`.
Nothing here is imported by the package.

    python make_golden.py --guided-diffusion /path/to/guided-diffusion --out golden.npz

Optional: `--only fid --out fid_alt.npz` under another SciPy, then `--fid-alt fid_alt.npz` in the main
run to store those FID values next to the main ones (keys `fid/<case>/value_alt`).

Every input is rebuilt from a numpy seed (recipes in README.md; the helpers `*_inputs` below are
the recipes). TensorFlow runs in graph mode (tf.compat.v1) with 1 intra-op and 1 inter-op thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from random_weights import random_inception_state_dict, read_inception_keys

F32, F16 = np.float32, np.float16


# ----------------------------------------------------------------------------------------------
# Input recipes (shared with the README; tests may re-implement them)
# ----------------------------------------------------------------------------------------------
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def uint8_images(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """NHWC uint8 noise images."""
    return rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


RESIZE_CASES = {
    # name: (input recipe, out size)
    "up_7x5_13x11": (lambda: rng(100).uniform(0.0, 255.0, size=(2, 7, 5, 3)).astype(F32), (13, 11)),
    "down_60x40_23x17": (lambda: rng(101).uniform(0.0, 255.0, size=(1, 60, 40, 3)).astype(F32), (23, 17)),
    "up_32_299": (lambda: uint8_images(203, 1, 32, 32).astype(F32), (299, 299)),
    "up_64_299": (lambda: uint8_images(200, 4, 64, 64)[:1].astype(F32), (299, 299)),
    "down_512_299": (lambda: uint8_images(202, 2, 512, 512)[:1].astype(F32), (299, 299)),
    "identity_299": (lambda: uint8_images(201, 2, 299, 299)[:1].astype(F32), (299, 299)),
}
RESIZE_FULL = {"up_7x5_13x11", "down_60x40_23x17"}  # others: strided subset [:, ::7, ::7, :] + sums

NET_IMAGES = {  # group: (seed, n, h, w)
    "img64": (200, 4, 64, 64),
    "img299": (201, 2, 299, 299),
    "img512": (202, 2, 512, 512),
}


def pr_inputs(case: str) -> tuple[np.ndarray, np.ndarray]:
    """(ref, sample) float32 feature sets for the P/R cases."""
    if case == "small":
        ref = rng(300).gamma(1.0, 0.4, size=(300, 2048)).astype(F32)
        sam = rng(301).gamma(1.0, 0.41, size=(500, 2048)).astype(F32)
    elif case == "overflow":  # |x| ~ 1e3: x*x overflows fp16 -> every block takes the fp32 path
        ref = (rng(310).standard_normal((100, 2048)) * 1e3).astype(F32)
        sam = (rng(311).standard_normal((120, 2048)) * 1e3 + 30.0).astype(F32)
    elif case == "mixed":  # ref rows 0..4 x300 overflow fp16; only blocks containing them fall back
        ref = rng(320).gamma(1.0, 0.4, size=(200, 2048)).astype(F32)
        ref[:5] *= F32(300.0)
        sam = rng(321).gamma(1.0, 0.4, size=(150, 2048)).astype(F32)
    elif case == "duplicates":
        ref = rng(330).gamma(1.0, 0.4, size=(100, 2048)).astype(F32)
        ref[10:14] = ref[0]  # 5 identical ref points (0, 10..13)
        ref[20] = ref[21]  # a pair
        sam = rng(331).gamma(1.0, 0.4, size=(80, 2048)).astype(F32)
        sam[:5] = ref[:5]  # samples identical to ref points
        sam[40:44] = sam[39]  # 5 identical samples (39..43)
    else:
        raise KeyError(case)
    return ref, sam


PR_CASES = ("small", "overflow", "mixed", "duplicates")
PR_BATCHES = (10000, 64)  # row_batch_size = col_batch_size


def is_acts() -> np.ndarray:
    """12000 x 2048 pool3-like activations for the TF softmax-graph IS case."""
    return (np.abs(rng(500).standard_normal((12000, 2048))) * 3.0).astype(F32)


def is_probs() -> np.ndarray:
    """12000 x 1008 float32 probabilities: float64 softmax of N(0,1)*4 logits, cast to float32."""
    logits = rng(501).standard_normal((12000, 1008)) * 4.0
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(F32)


def is_probs_zero() -> np.ndarray:
    """10 x 5 float32 probabilities with one exact zero (ADM's formula gives NaN)."""
    p = rng(502).uniform(0.1, 1.0, size=(10, 5))
    p[3, 2] = 0.0
    return (p / p.sum(axis=1, keepdims=True)).astype(F32)


def fid_inputs(case: str) -> tuple[np.ndarray, np.ndarray]:
    """(ref_acts, sample_acts) float32."""
    if case == "d64":
        return (rng(400).standard_normal((600, 64)).astype(F32),
                (rng(401).standard_normal((500, 64)) * 1.1 + 0.1).astype(F32))
    if case == "d256":
        a = rng(402).gamma(1.0, 0.4, size=(1000, 256)).astype(F32)
        b = rng(403).gamma(1.0, 0.45, size=(800, 256)).astype(F32)
        return a, b
    if case == "rank_deficient":  # N < d: singular covariances, sqrtm finite (no eps path)
        return rng(404).standard_normal((40, 128)).astype(F32), rng(405).standard_normal((50, 128)).astype(F32)
    if case == "dead_features":  # 5 constant (zero) features in both sets
        a = np.abs(rng(406).standard_normal((300, 64))).astype(F32)
        b = np.abs(rng(407).standard_normal((300, 64))).astype(F32)
        a[:, :5] = 0
        b[:, :5] = 0
        return a, b
    if case == "eps_path":  # tiny integer-valued sets whose sqrtm(s_sample @ s_ref) is non-finite
        r = rng(52)
        d = int(r.integers(2, 6))
        n1 = int(r.integers(2, 4))
        n2 = int(r.integers(2, 4))
        a1 = r.integers(-1, 2, (n1, d)).astype(F32)  # ref
        a2 = r.integers(-1, 2, (n2, d)).astype(F32)  # sample
        return a1, a2
    raise KeyError(case)


FID_CASES = ("d64", "d256", "rank_deficient", "dead_features", "eps_path")


# ----------------------------------------------------------------------------------------------
# Our numpy emulation of TF-CPU's fp16 DistanceBlock (checked against TF below)
# ----------------------------------------------------------------------------------------------
def _hadd(a, b):
    return (a.astype(F32) + b.astype(F32)).astype(F16)


def _eigen_half_leaf(x: np.ndarray, packet: int) -> np.ndarray:
    n_rows, n = x.shape
    start = 0
    p0 = np.zeros((n_rows, packet), F16)
    if n >= 4 * packet:
        v4 = (n // (4 * packet)) * 4 * packet
        p1, p2, p3 = (np.zeros((n_rows, packet), F16) for _ in range(3))
        for j in range(0, v4, 4 * packet):
            p0 = _hadd(p0, x[:, j:j + packet])
            p1 = _hadd(p1, x[:, j + packet:j + 2 * packet])
            p2 = _hadd(p2, x[:, j + 2 * packet:j + 3 * packet])
            p3 = _hadd(p3, x[:, j + 3 * packet:j + 4 * packet])
        p0 = _hadd(_hadd(_hadd(p0, p1), p2), p3)
        start = v4
    if start <= n - packet:
        vs = (n // packet) * packet
        for j in range(start, vs, packet):
            p0 = _hadd(p0, x[:, j:j + packet])
        start = vs
    acc = np.zeros(n_rows, F16)
    for j in range(start, n):
        acc = _hadd(acc, x[:, j])
    pf = p0.astype(F32)  # predux<Packet8h>: float horizontal sum, then one rounding to half
    while pf.shape[1] > 4:
        k = pf.shape[1] // 2
        pf = pf[:, :k] + pf[:, k:]
    red = ((pf[:, 0] + pf[:, 2]) + (pf[:, 1] + pf[:, 3])).astype(F16)
    return _hadd(acc, red)


def _eigen_half_tree(x: np.ndarray, first_mod: int, packet: int, leaf: int) -> np.ndarray:
    n = x.shape[1]
    if n > packet * leaf:
        # split point aligned on a packet boundary of the ABSOLUTE flat index (first + ...)
        split_rel = packet * -(-(first_mod + -(-n // 2)) // packet) - first_mod
        n_left = min(split_rel, n)
        acc = _hadd(np.zeros(x.shape[0], F16), _eigen_half_tree(x[:, :n_left], first_mod, packet, leaf))
        if n_left < n:
            acc = _hadd(acc, _eigen_half_tree(x[:, n_left:], (first_mod + n_left) % packet, packet, leaf))
        return acc
    return _eigen_half_leaf(x, packet)


def eigen_half_rowsum(x: np.ndarray, packet: int = 8, leaf: int = 200) -> np.ndarray:
    """tf.reduce_sum(x, 1) for a C-contiguous half [N, K] on TF's CPU: Eigen's tree
    InnerMostDimReducer for SumReducer<half> (Packet8h, leaf 200, half accumulators). Row r starts
    at flat index r*K, which moves the tree's packet-aligned split when K % 8 != 0."""
    n_rows, n = x.shape
    out = np.zeros(n_rows, F16)
    firsts = (np.arange(n_rows) * n) % packet
    for fm in np.unique(firsts):
        sel = firsts == fm
        out[sel] = _eigen_half_tree(x[sel], int(fm), packet, leaf)
    return out


def blocked_fp32_dot(u16: np.ndarray, v16: np.ndarray, kc: int) -> np.ndarray:
    """u16 @ v16.T: exact fp32 products, sequential fp32 sums over K-blocks of kc, block sums
    added in fp32 to a zero-initialised fp32 C, one rounding to half."""
    U, V = u16.astype(F32), v16.astype(F32)
    K = U.shape[1]
    C = np.zeros((U.shape[0], V.shape[0]), F32)
    for k0 in range(0, K, kc):
        acc = np.zeros_like(C)
        for k in range(k0, min(K, k0 + kc)):
            acc += np.multiply.outer(U[:, k], V[:, k])
        C += acc
    return C.astype(F16)


def emulate_distance_block_fp16(u: np.ndarray, v: np.ndarray, kc: int = 344, norms: str = "eigen_half",
                                dot: str = "blocked") -> np.ndarray:
    u16, v16 = u.astype(F16), v.astype(F16)
    if norms == "eigen_half":
        nu = eigen_half_rowsum((u16.astype(F32) ** 2).astype(F16))
        nv = eigen_half_rowsum((v16.astype(F32) ** 2).astype(F16))
    else:  # "fp32": fp32 sum of the exact squares, one rounding
        nu = (u16.astype(F32) ** 2).sum(1).astype(F16)
        nv = (v16.astype(F32) ** 2).sum(1).astype(F16)
    if dot == "blocked":
        d = blocked_fp32_dot(u16, v16, kc)
    else:  # "fp32": any-order fp32 matmul, one rounding
        d = (u16.astype(F32) @ v16.astype(F32).T).astype(F16)
    with np.errstate(over="ignore", invalid="ignore"):
        two_d = (F32(2) * d.astype(F32)).astype(F16)
        t = (nu.astype(F32)[:, None] - two_d.astype(F32)).astype(F16)
        s = (t.astype(F32) + nv.astype(F32)[None, :]).astype(F16)
        return np.maximum(s, F16(0)).astype(F32)


def emulated_pr(ref: np.ndarray, sam: np.ndarray, **kw) -> dict:
    """ADM's radii / precision / recall from an emulated DistanceBlock (one block: N <= 10000)."""

    def dist(a, b):
        with np.errstate(over="ignore", invalid="ignore"):
            d = emulate_distance_block_fp16(a, b, **kw)
        if np.isfinite(d).all():
            return d
        na, nb = (a * a).sum(1), (b * b).sum(1)  # fp32 fallback (TF's order not emulated)
        return np.maximum(na[:, None] - 2 * (a @ b.T) + nb[None, :], 0).astype(F32)

    r_ref = np.partition(dist(ref, ref), 3, axis=1)[:, 3:4]
    r_sam = np.partition(dist(sam, sam), 3, axis=1)[:, 3:4]
    d = dist(ref, sam)
    return {"radii_ref": r_ref, "radii_sample": r_sam,
            "precision": float((d <= r_ref).any(axis=0).mean()), "recall": float((d <= r_sam.T).any(axis=1).mean())}


# ----------------------------------------------------------------------------------------------
def import_evaluator(gd: Path):
    sys.path.insert(0, str(gd / "evaluations"))
    import evaluator as ev

    ev.tf.disable_eager_execution()
    return ev


def tf_session(ev):
    tf = ev.tf
    return tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))


def section_resize(out: dict, ev) -> None:
    import torch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    tf = ev.tf
    with tf.Graph().as_default() as g:
        x_ph = tf.placeholder(tf.float32, [None, None, None, 3])
        size_ph = tf.placeholder(tf.int32, [2])
        y_op = tf.compat.v1.image.resize_bilinear(x_ph, size_ph, align_corners=False, half_pixel_centers=False)
        sess = tf.Session(graph=g, config=tf.ConfigProto(intra_op_parallelism_threads=1,
                                                         inter_op_parallelism_threads=1))
        for name, (make, size) in RESIZE_CASES.items():
            x = make()
            y = sess.run(y_op, {x_ph: x, size_ph: np.array(size, np.int32)})
            assert y.dtype == F32 and y.shape == (x.shape[0], *size, 3)
            k = f"resize/{name}"
            if name in RESIZE_FULL:
                out[f"{k}/input"] = x
                out[f"{k}/output"] = y
            else:
                out[f"{k}/output_sub7"] = np.ascontiguousarray(y[:, ::7, ::7, :])
            out[f"{k}/sum"] = np.float64(y.astype(np.float64).sum())
            out[f"{k}/sumsq"] = np.float64((y.astype(np.float64) ** 2).sum())
            yt = interpolate_bilinear_2d_like_tensorflow1x(
                torch.from_numpy(x).permute(0, 3, 1, 2), size=size, align_corners=False
            ).permute(0, 2, 3, 1).numpy()
            out[f"{k}/tfid_maxabs"] = np.float64(np.abs(yt.astype(np.float64) - y).max())
            if name == "identity_299":
                out[f"{k}/equals_input"] = np.bool_(np.array_equal(x, y))
            print(f"resize {name}: tf vs torch-fidelity max|d| = {out[f'{k}/tfid_maxabs']:.3g}", flush=True)


def section_net(out: dict, workdir: Path) -> None:
    import pytorch_fid.inception as pfi
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    torch.set_num_threads(1)
    shapes = read_inception_keys(HERE / "inception_keys.txt")
    sd = {k: torch.from_numpy(v) for k, v in random_inception_state_dict(shapes, seed=0).items()}
    pth = workdir / "random_inception_seed0.pth"
    torch.save(sd, pth)

    # (torch-fidelity 0.4.0 maps feature_extractor_internal_dtype="float64" to float32, so the float64
    # reference below runs pytorch-fid's network in double instead.)
    fe32 = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                       feature_extractor_weights_path=str(pth))
    st32 = {}
    fe32.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: st32.__setitem__("b1", o.detach().clone()))
    fe32.Mixed_6d.register_forward_hook(lambda m, i, o: st32.__setitem__("blk", o.detach().clone()))
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: {k2: v.clone() for k2, v in sd.items()}
    try:
        pfid = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()
        pfid64 = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval().double()
        pfid_default = pfi.InceptionV3([3]).eval()  # its own resize (half-pixel) and 2x-1 scaling
    finally:
        pfi.load_state_dict_from_url = orig
    st64 = {}
    # pytorch-fid's blocks hold the same torchvision modules: blocks[2][6] is Mixed_6d
    pfid64.blocks[2][6].branch1x1.register_forward_hook(lambda m, i, o: st64.__setitem__("b1", o.detach().clone()))

    def spatial(t):
        return t[:, :7].permute(0, 2, 3, 1).reshape(t.shape[0], 7 * 17 * 17)

    with torch.no_grad():
        for group, (seed, n, h, w) in NET_IMAGES.items():
            imgs = uint8_images(seed, n, h, w)
            k = f"net/{group}"
            if group == "img64":
                out[f"{k}/images"] = imgs
            out[f"{k}/images_crc32"] = np.int64(zlib.crc32(imgs.tobytes()))
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
            pool, logits = fe32(x)
            sp = spatial(st32["b1"])
            assert torch.equal(sp, spatial(st32["blk"])), "branch1x1 != first 7 channels of Mixed_6d"
            out[f"{k}/tfid_pool"] = pool.numpy()
            out[f"{k}/tfid_logits_unbiased"] = logits.numpy()
            out[f"{k}/tfid_spatial"] = sp.numpy()
            # pytorch-fid network on torch-fidelity's resized + (x-128)/128 input
            xr = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
            xr = (xr - 128) / 128
            pp = pfid(xr)[0].reshape(n, 2048)
            out[f"{k}/pfid_pool_on_tf_input"] = pp.numpy()
            # float64 network on the same float32 resized input (reference for tolerances)
            pool64 = pfid64(xr.double())[0].reshape(n, 2048)
            fe64_pool = pool64.numpy()
            out[f"{k}/pool_f64"] = fe64_pool
            out[f"{k}/spatial_f64"] = spatial(st64["b1"]).numpy()
            pd = pfid_default(x.float() / 255.0)[0].reshape(n, 2048)
            out[f"{k}/pfid_default_pipeline_maxabs_vs_tfid"] = np.float64((pd - pool).abs().max())
            print(f"net {group}: pool3 |x| mean {pool.abs().mean():.3f}, tfid vs pfid max|d| "
                  f"{(pp - pool).abs().max():.3g}, f32 vs f64 max|d| pool {np.abs(pool.numpy() - fe64_pool).max():.3g} "
                  f"spatial {np.abs(sp.numpy() - out[f'{k}/spatial_f64']).max():.3g}, "
                  f"pfid default pipeline max|d| {float(out[f'{k}/pfid_default_pipeline_maxabs_vs_tfid']):.3g}",
                  flush=True)


class _IdentitySession:
    def run(self, fetch, feed_dict):
        return next(iter(feed_dict.values()))


class _FakeEvaluator:
    """Just the attributes Evaluator.compute_inception_score / compute_prec_recall read."""


def section_is(out: dict, ev, sess) -> None:
    tf = ev.tf
    shapes = read_inception_keys(HERE / "inception_keys.txt")
    W = random_inception_state_dict({"fc.weight": shapes["fc.weight"]}, seed=0)["fc.weight"].T.copy()  # [2048,1008]
    fe = _FakeEvaluator()
    fe.sess, fe.softmax_batch_size = sess, 512
    with sess.graph.as_default():
        fe.softmax_input = tf.placeholder(tf.float32, shape=[None, 2048])
        fe.softmax = tf.nn.softmax(tf.matmul(fe.softmax_input, tf.constant(W)))  # as _create_softmax_graph
    acts = is_acts()
    out["is/tf_graph/value"] = np.float64(ev.Evaluator.compute_inception_score(fe, acts))
    out["is/tf_graph/split_values"] = np.array(
        [ev.Evaluator.compute_inception_score(fe, acts[i:i + 5000]) for i in range(0, 12000, 5000)])
    probs_tf = sess.run(fe.softmax, {fe.softmax_input: acts[:4]})
    out["is/tf_graph/probs_first4"] = probs_tf

    fe2 = _FakeEvaluator()
    fe2.sess, fe2.softmax_batch_size, fe2.softmax_input = _IdentitySession(), 512, "probs"
    fe2.softmax = None
    p = is_probs()
    out["is/probs/value"] = np.float64(ev.Evaluator.compute_inception_score(fe2, p))
    out["is/probs/split_values"] = np.array(
        [ev.Evaluator.compute_inception_score(fe2, p[i:i + 5000]) for i in range(0, 12000, 5000)])
    out["is/probs/value_split_size_4000"] = np.float64(ev.Evaluator.compute_inception_score(fe2, p, 4000))
    out["is/probs/probs_sum"] = np.float64(p.astype(np.float64).sum())
    pz = is_probs_zero()
    with np.errstate(divide="ignore", invalid="ignore"):
        out["is/zero_prob/value"] = np.float64(ev.Evaluator.compute_inception_score(fe2, pz))
    out["is/zero_prob/probs"] = pz
    print("IS:", {k: out[k] for k in ("is/tf_graph/value", "is/probs/value", "is/zero_prob/value")}, flush=True)


def section_pr(out: dict, ev, sess) -> None:
    fp16 = {}
    for case in PR_CASES:
        ref, sam = pr_inputs(case)
        for bs in PR_BATCHES:
            me = ev.ManifoldEstimator(sess, row_batch_size=bs, col_batch_size=bs)
            fe = _FakeEvaluator()
            fe.manifold_estimator = me
            r_ref = me.manifold_radii(ref)
            r_sam = me.manifold_radii(sam)
            prec, rec = ev.Evaluator.compute_prec_recall(fe, ref, sam)
            k = f"pr/{case}/b{bs}"
            out[f"{k}/precision"] = np.float64(prec)
            out[f"{k}/recall"] = np.float64(rec)
            out[f"{k}/radii_ref"] = r_ref
            out[f"{k}/radii_sample"] = r_sam
            print(f"PR {case} batch {bs}: P={prec} R={rec}", flush=True)
            if bs == 10000:
                for label, kw in {"emul_exact": {}, "emul_fp32acc": {"norms": "fp32", "dot": "fp32"}}.items():
                    em = emulated_pr(ref, sam, **kw)
                    out[f"pr/{case}/{label}/precision"] = np.float64(em["precision"])
                    out[f"pr/{case}/{label}/recall"] = np.float64(em["recall"])
                    out[f"pr/{case}/{label}/radii_ref_mismatches"] = np.int64((em["radii_ref"] != r_ref).sum())
                    out[f"pr/{case}/{label}/radii_sample_mismatches"] = np.int64((em["radii_sample"] != r_sam).sum())
                    print(f"   {label}: P={em['precision']} R={em['recall']} radii mismatches "
                          f"{int(out[f'pr/{case}/{label}/radii_ref_mismatches'])}/{len(ref)} "
                          f"{int(out[f'pr/{case}/{label}/radii_sample_mismatches'])}/{len(sam)}", flush=True)
                db = me.distance_block
                blocks = {"ref_ref": (ref, ref), "sample_sample": (sam, sam), "ref_sample": (ref, sam)}
                for bname, (a, b) in blocks.items():
                    D = db.pairwise_distances(a, b)
                    if bname == "ref_sample":
                        out[f"pr/{case}/D_ref_sample_first32x64"] = D[:32, :64].copy()
                    with np.errstate(over="ignore"):
                        D16_finite = bool(np.isfinite(emulate_distance_block_fp16(a, b, dot="fp32")).all())
                    if not D16_finite:
                        fp16[f"{case}/{bname}"] = "fp32 fallback"
                        continue
                    res = {}
                    for label, kw in {"exact(eigen_half norms, kc=344)": {},
                                      "fp32 norms, kc=344": {"norms": "fp32"},
                                      "eigen_half norms, fp32 dot": {"dot": "fp32"},
                                      "fp32 norms, fp32 dot": {"norms": "fp32", "dot": "fp32"}}.items():
                        E = emulate_distance_block_fp16(a, b, **kw)
                        res[label] = int((E != D).sum())
                    fp16[f"{case}/{bname}"] = (res, D.size)
                    out[f"fp16/{case}/{bname}/mismatches_exact"] = np.int64(res["exact(eigen_half norms, kc=344)"])
                    out[f"fp16/{case}/{bname}/mismatches_fp32_norms_fp32_dot"] = np.int64(res["fp32 norms, fp32 dot"])
                    out[f"fp16/{case}/{bname}/entries"] = np.int64(D.size)
    for k, v in fp16.items():
        print("fp16 emulation", k, v, flush=True)


def section_fid(out: dict, ev_fid) -> None:
    FIDStatistics = ev_fid["FIDStatistics"]
    for case in FID_CASES:
        a_ref, a_sam = fid_inputs(case)
        ref = FIDStatistics(np.mean(a_ref, axis=0), np.cov(a_ref, rowvar=False))  # = Evaluator.compute_statistics
        sam = FIDStatistics(np.mean(a_sam, axis=0), np.cov(a_sam, rowvar=False))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            val = sam.frechet_distance(ref)
        eps = any("adding" in str(x.message) for x in w)
        k = f"fid/{case}"
        out[f"{k}/value"] = np.float64(val)
        out[f"{k}/eps_path"] = np.bool_(eps)
        if case == "eps_path":
            out[f"{k}/ref_acts"] = a_ref
            out[f"{k}/sample_acts"] = a_sam
        out[f"{k}/mu_ref_dtype_is_f32"] = np.bool_(ref.mu.dtype == F32)
        print(f"FID {case}: {float(val)!r} eps_path={eps}", flush=True)


def load_fid_namespace(gd: Path) -> dict:
    """FIDStatistics from evaluator.py without importing TensorFlow (exec of that class only)."""
    src = (gd / "evaluations" / "evaluator.py").read_text()
    start, end = src.index("class InvalidFIDException"), src.index("class Evaluator")
    ns: dict = {}
    exec("import numpy as np\nimport warnings\nfrom scipy import linalg\n" + src[start:end], ns)
    return ns


def versions() -> dict:
    import scipy

    v = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
         "machine": platform.machine()}
    for mod in ("tensorflow", "torch", "torchvision", "torch_fidelity", "pytorch_fid"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guided-diffusion", type=Path, default=Path("/work/scratch/guided-diffusion"))
    ap.add_argument("--out", type=Path, default=HERE / "golden.npz")
    ap.add_argument("--only", choices=("all", "fid"), default="all")
    ap.add_argument("--fid-alt", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/evalgold_work"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    ver = versions()
    section_fid(out, load_fid_namespace(args.guided_diffusion))
    if args.only == "all":
        if args.fid_alt is not None:
            alt = np.load(args.fid_alt)
            for case in FID_CASES:
                out[f"fid/{case}/value_alt"] = alt[f"fid/{case}/value"]
                out[f"fid/{case}/eps_path_alt"] = alt[f"fid/{case}/eps_path"]
            out["meta/fid_alt_versions"] = alt["meta/versions"]
        ev = import_evaluator(args.guided_diffusion)
        section_resize(out, ev)
        sess = tf_session(ev)
        section_is(out, ev, sess)
        section_pr(out, ev, sess)
        section_net(out, args.workdir)
        ver = versions()
    out["meta/versions"] = np.array([f"{k}={v}" for k, v in ver.items()])
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(out)} keys)")


if __name__ == "__main__":
    main()
