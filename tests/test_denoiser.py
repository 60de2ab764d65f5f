"""The guided denoiser: classifier-free guidance, classifier guidance, both, intervals, thresholding,
and every sampler through `sample_images` on a tiny UNet with a null class."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import Denoiser, Guidance, dynamic_threshold, make_schedule, predict_eps_from_x0
from adm_cli.generate import SAMPLERS, GenerateError, SampleOptions, build_denoiser, sample_images
from tests.conftest import TINY_UNET, write_unet

CPU = make_backend("cpu", "fp32")
CFG_UNET = dataclasses.replace(TINY_UNET, null_class=True)


@pytest.fixture(scope="module")
def cfg_model(tmp_path_factory):
    return write_unet(tmp_path_factory.mktemp("cfg") / "cfg.pt", CFG_UNET)


def inputs(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return x, torch.tensor([90, 40, 5][:n]), torch.tensor([0, 3, 1][:n])


def denoiser_for(model, options: SampleOptions, labels: torch.Tensor, classifier=None) -> Denoiser:
    return build_denoiser(model, schedule=make_schedule(model.diffusion), options=options, backend=CPU, labels=labels,
                          classifier=classifier)


def test_cfg_combines_two_separate_forwards(cfg_model) -> None:
    """ε̃ = (1 + w) ε(x, y) - w ε(x, ∅) with the doubled batch equal to two plain forwards; the
    variance channels come from the conditional pass."""
    model = load_model(cfg_model)
    x, t, y = inputs()
    w = 2.5
    d = denoiser_for(model, SampleOptions(num=3, sampler="ddim", cfg_scale=w, clip_denoised=False), y)
    with torch.no_grad():
        cond = model.model(x, t, y=y)
        uncond = model.model(x, t, y=torch.full_like(y, CFG_UNET.num_classes))
        guided = d.network(x, t, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(guided[:, :3], (1 + w) * cond[:, :3] - w * uncond[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided[:, 3:], cond[:, 3:], rtol=1e-5, atol=1e-5)


def test_cfg_scale_zero_is_the_conditional_model(cfg_model) -> None:
    model = load_model(cfg_model)
    labels = torch.tensor([0, 1, 2])
    a, _ = sample_images(model, 3, sampler="dpm++2m", respacing="6", spacing="logsnr", labels=labels, cfg_scale=0.0)
    b, _ = sample_images(model, 3, sampler="dpm++2m", respacing="6", spacing="logsnr", labels=labels)
    c, _ = sample_images(model, 3, sampler="dpm++2m", respacing="6", spacing="logsnr", labels=labels, cfg_scale=3.0)
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)


def test_classifier_and_cfg_together_add_both_shifts(cfg_model, models) -> None:
    """x̂_0 of CFG + classifier = that of CFG alone with ε shifted by -s √(1-ᾱ) ∇ log p(y | x_t)."""
    model, clf = load_model(cfg_model), load_model(models["classifier"])
    x, t, y = inputs()
    s, w = 3.0, 1.5
    both = denoiser_for(model, SampleOptions(num=3, sampler="ddim", guidance_scale=s, cfg_scale=w, clip_denoised=False), y, clf)
    cfg_only = denoiser_for(model, SampleOptions(num=3, sampler="ddim", cfg_scale=w, clip_denoised=False), y)
    sch = both.schedule
    out, ref = both(x, t), cfg_only(x, t)
    grad = torch.func.grad(lambda v: clf.model(v, t).log_softmax(-1)[torch.arange(3), y].sum())(x)
    eps = predict_eps_from_x0(x, t, ref.x0_pred, schedule=sch) - s * torch.sqrt(1 - sch.alpha_bar[t]).float().view(-1, 1, 1, 1) * grad
    torch.testing.assert_close(out.eps_pred, eps, rtol=1e-4, atol=1e-4)


def test_guidance_interval(cfg_model, models) -> None:
    """Inside [lo, hi] the step is guided, outside it is the plain conditional step."""
    model, clf = load_model(cfg_model), load_model(models["classifier"])
    x, t, y = inputs()  # t = 90, 40, 5
    opts = dict(num=3, sampler="ddim", guidance_scale=5.0, cfg_scale=2.0, clip_denoised=False)
    inside = denoiser_for(model, SampleOptions(**opts, guidance_interval=(30, 95)), y, clf)(x, t)
    always = denoiser_for(model, SampleOptions(**opts), y, clf)(x, t)
    never = denoiser_for(model, SampleOptions(num=3, sampler="ddim", clip_denoised=False), y)(x, t)
    torch.testing.assert_close(inside.x0_pred[:2], always.x0_pred[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside.x0_pred[2:], never.x0_pred[2:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(always.x0_pred[2:], never.x0_pred[2:], atol=1e-3)


@pytest.mark.parametrize(("threshold", "clip"), [(None, True), (0.9, True), (None, False)])
def test_solvers_correct_the_guided_x0_and_ddim_keeps_the_reference(threshold, clip) -> None:
    """At the cosine schedule's last step (ᾱ_999 ≈ 2e-9) a small classifier gradient moves x̂_0 by
    thousands. DDIM keeps guided-diffusion's unclipped shift; the data-prediction solvers correct
    the guided x̂_0 (clip, or the dynamic threshold) and recompute ε̂ and the mean from it, so x_t
    = √ᾱ x̂_0 + √(1-ᾱ) ε̂ still holds."""
    config = DiffusionConfig(steps=1000, schedule="cosine")
    schedule = make_schedule(config)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500])
    kw = dict(schedule=schedule, config=config, guidance=Guidance(classifier_scale=1.0), clip_denoised=clip,
              threshold=threshold, grad_fn=lambda v, mt, y: torch.full_like(v, 0.01))
    net = lambda v, mt, y: 0.9 * v  # noqa: E731 - an ε-prediction network: x̂_0 from it is in range
    reference = Denoiser(net, **kw)(x, t)
    solver = Denoiser(net, **kw, correct_guided_x0=True)(x, t)
    assert reference.x0_pred[0].abs().max() > 100  # the reference's shift, unclipped
    if not clip and threshold is None:
        torch.testing.assert_close(solver.x0_pred, reference.x0_pred)  # nothing to correct with
        return
    assert solver.x0_pred.abs().max() <= 1 + 1e-6
    expected = reference.x0_pred.clamp(-1, 1) if threshold is None else dynamic_threshold(reference.x0_pred, threshold)
    torch.testing.assert_close(solver.x0_pred, expected)
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1).to(x.dtype)
    torch.testing.assert_close(ab.sqrt() * solver.x0_pred + (1 - ab).sqrt() * solver.eps_pred, x, rtol=1e-4, atol=1e-4)


def test_build_denoiser_corrects_guided_x0_for_the_solvers_only(cfg_model, models) -> None:
    model, clf = load_model(cfg_model), load_model(models["classifier"])
    for sampler in SAMPLERS:
        d = denoiser_for(model, SampleOptions(num=3, sampler=sampler, guidance_scale=1.0), torch.tensor([0, 1, 2]), clf)
        assert d.correct_guided_x0 == (sampler not in ("ddpm", "ddim")), sampler


def test_dynamic_threshold_closed_form() -> None:
    x0 = torch.linspace(-3, 3, 201, dtype=torch.float64).view(1, 1, 1, 201).repeat(2, 1, 1, 1)
    x0[1] *= 0.5  # |x| <= 1.5
    out = dynamic_threshold(x0, 0.995)
    s = torch.quantile(x0.abs().flatten(1), 0.995, dim=1)  # per image
    torch.testing.assert_close(out[0], x0[0].clamp(-s[0], s[0]) / s[0])
    torch.testing.assert_close(out[1], x0[1].clamp(-s[1], s[1]) / s[1])
    small = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    torch.testing.assert_close(dynamic_threshold(small), small)  # s is at least 1: values inside [-1, 1] stay


def test_mean_guidance_is_refused_by_the_ode_samplers() -> None:
    config = DiffusionConfig(steps=50)
    d = Denoiser(lambda x, t, y: torch.zeros_like(x), schedule=make_schedule(config, "5"), config=config,
                 guidance=Guidance(classifier_scale=1.0, classifier_mode="mean"), grad_fn=lambda x, t, y: x)
    from adm_cli.diffusion import sample_dpmpp, sample_heun, sample_unipc

    for run in (sample_dpmpp, sample_unipc, sample_heun):
        with pytest.raises(ValueError, match="score guidance"):
            run(d, torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_with_both_guidances_is_batch_independent(cfg_model, models, sampler: str) -> None:
    """Every sampler runs with classifier and classifier-free guidance; image i does not depend on
    the batch it was drawn in."""
    model, clf = load_model(cfg_model), load_model(models["classifier"])
    kw = dict(sampler=sampler, respacing="5", spacing=None if sampler in ("ddpm", "ddim") else "logsnr",
              classifier=clf, guidance_scale=2.0, cfg_scale=1.5, seed=4)
    four, labels = sample_images(model, 4, **kw)
    one, one_label = sample_images(load_model(cfg_model), 1, **{**kw, "seed": 6})
    assert torch.isfinite(four).all()
    assert one_label[0] == labels[2]
    torch.testing.assert_close(one[0], four[2], rtol=0, atol=2e-3)  # float32 batch effects, far below 1/255


def test_cfg_needs_a_null_class(models) -> None:
    with pytest.raises(GenerateError, match="null class"):
        sample_images(load_model(models["unet"]), 2, cfg_scale=1.0)
