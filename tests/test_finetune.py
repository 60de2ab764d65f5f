"""Fine-tuning with --init (issue 13): weights carried over exactly, the label embedding re-made
for other classes, conditional <-> unconditional, a null class added, classifier heads and a
frozen encoder, the run's record of where it started, resume before the first checkpoint, and
the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.checkpoint import load_model, read_checkpoint
from adm_cli.config import ConfigError
from adm_cli.nn import build_unet
from adm_cli.train.init import InitSource, diffusion_configs_from_init, load_init, transfer_weights
from tests.conftest import TINY_UNET, randomized
from tests.cli_helpers import adm, adm_fails, invoke

ARCH = ["--preset", "tiny", "--image-size", "8", "--model-channels", "32", "--diffusion-steps", "50"]
RUN = ["--batch-size", "4", "--log-every", "1", "--quiet"]


def labelled_npz(path: Path, classes: int, n: int = 24, size: int = 8) -> Path:
    rng = np.random.default_rng(classes)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.savez(path, images, np.arange(n) % classes)
    return path


def unlabelled_npz(path: Path, n: int = 24, size: int = 8) -> Path:
    np.savez(path, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained diffusion runs (conditional on 4 classes, unconditional) and a classifier."""
    root = tmp_path_factory.mktemp("base")
    four = labelled_npz(root / "four.npz", 4)
    adm("train-diffusion", four, "--out", root / "cond", *ARCH, *RUN, "--steps", "2")
    adm("train-diffusion", unlabelled_npz(root / "plain.npz"), "--out", root / "uncond", *ARCH, *RUN, "--steps", "2")
    adm("train-classifier", four, "--out", root / "clf", "--image-size", "8", "--model-channels", "32",
        "--diffusion-steps", "50", "--val-fraction", "0", *RUN, "--steps", "2")
    return {"root": root, "cond": root / "cond", "uncond": root / "uncond", "clf": root / "clf", "four": four}


def newest(run: Path) -> dict:
    return read_checkpoint(sorted((run / "checkpoints").glob("step-*.pt"))[-1])


def init_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights --init takes from a run: the first EMA rate's."""
    state = newest(run)
    return state["ema"][next(iter(state["ema"]))]


def test_same_classes_starts_from_the_checkpoint_and_records_it(base_runs, tmp_path):
    out = tmp_path / "ft"
    adm("train-diffusion", base_runs["four"], "--out", out, "--init", base_runs["cond"], *RUN, "--steps", "1", "--lr", "1e-12", "--no-flip")
    source = init_weights(base_runs["cond"])
    tuned = newest(out)
    assert tuned["step"] == 1
    for name, value in tuned["model"].items():  # one step at lr 1e-12 moves nothing visibly
        assert torch.allclose(value, source[name], atol=1e-9), name
    ema = tuned["ema"][next(iter(tuned["ema"]))]
    assert all(torch.allclose(ema[n], source[n], atol=1e-9) for n in source)  # EMA starts at the init weights
    run = json.loads((out / "run.json").read_text())
    ckpt = sorted((base_runs["cond"] / "checkpoints").glob("step-*.pt"))[-1]
    import hashlib

    assert run["init"]["path"] == str(ckpt.resolve())
    assert run["init"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert run["init"]["source"] == "adm" and run["init"]["step"] == 2 and run["init"]["changes"] == []
    assert run["config"]["unet"] == read_checkpoint(ckpt)["config"]["unet"]  # the architecture is the checkpoint's
    assert "exp_avg" in str(tuned["train_state"]["optimizer"]) and len(tuned["train_state"]["optimizer"]["state"]) > 0


def test_other_class_count_makes_a_new_embedding_from_the_mean(base_runs, tmp_path):
    out = tmp_path / "ft3"
    result = invoke(*["train-diffusion", str(labelled_npz(tmp_path / "three.npz", 3)), "--out", str(out),
                                 "--init", str(base_runs["cond"]), "--batch-size", "4", "--steps", "1", "--lr", "1e-12"])
    assert result.exit_code == 0, result.output
    assert "4 classes -> 3: a new label embedding" in result.output
    source = init_weights(base_runs["cond"])
    tuned = newest(out)["model"]
    assert tuned["label_emb.weight"].shape[0] == 3
    mean = source["label_emb.weight"][:4].mean(dim=0)
    assert torch.allclose(tuned["label_emb.weight"], mean.expand(3, -1), atol=1e-9)
    assert json.loads((out / "run.json").read_text())["config"]["unet"]["num_classes"] == 3


def test_unconditional_to_conditional_starts_as_the_unconditional_model(base_runs):
    source = load_init(base_runs["uncond"], kinds=("diffusion",))
    unet, _ = diffusion_configs_from_init(source, data_classes=5, class_cond=None, null_class=True, unet={}, diffusion={})
    assert unet.num_classes == 5 and unet.null_class
    model = build_unet(unet).eval()
    transfer_weights(model, source)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 20, 49])
    with torch.no_grad():
        expected = source.loaded.model(x, t)
        for y in (torch.tensor([0, 2, 4]), torch.tensor([5, 5, 5])):  # any class, and the null class
            assert torch.equal(model(x, t, y=y), expected)
    assert any("unconditional -> conditional on 5 classes" in c for c in source.changes)


def test_conditional_to_unconditional_drops_the_embedding(base_runs, tmp_path):
    out = tmp_path / "plain"
    result = invoke(*["train-diffusion", str(base_runs["four"]), "--out", str(out), "--init", str(base_runs["cond"]),
                                 "--no-class-cond", "--batch-size", "4", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "conditional on 4 classes -> unconditional" in result.output
    assert "label_emb.weight" not in newest(out)["model"]
    assert load_model(out).config.num_classes is None


def test_label_dropout_adds_a_null_class_at_the_mean(base_runs):
    source = load_init(base_runs["cond"], kinds=("diffusion",))
    unet, _ = diffusion_configs_from_init(source, data_classes=4, class_cond=True, null_class=True, unet={}, diffusion={})
    model = build_unet(unet)
    transfer_weights(model, source)
    old = source.loaded.model.state_dict()["label_emb.weight"]
    new = model.state_dict()["label_emb.weight"]
    assert new.shape[0] == 5
    assert torch.equal(new[:4], old) and torch.allclose(new[4], old.mean(dim=0))


def test_every_other_weight_is_copied_exactly(models):
    source = load_init(models["unet"], kinds=("diffusion",))
    unet, _ = diffusion_configs_from_init(source, data_classes=2, class_cond=None, null_class=False, unet={}, diffusion={})
    model = build_unet(unet)
    transfer_weights(model, source)
    old = source.loaded.model.state_dict()
    for name, value in model.state_dict().items():
        if name != "label_emb.weight":
            assert torch.equal(value, old[name]), name


def test_a_bare_guided_diffusion_state_dict_starts_a_run(tmp_path):
    """OpenAI's format: a bare state dict; what its shapes cannot tell comes from the flags."""
    bare = tmp_path / "bare.pt"
    torch.save(randomized(build_unet(TINY_UNET)).state_dict(), bare)
    data = labelled_npz(tmp_path / "four16.npz", 4, size=16)
    out = tmp_path / "ft"
    result = invoke(*["train-diffusion", str(data), "--out", str(out), "--init", str(bare), "--image-size", "16",
                                 "--num-head-channels", "16", "--schedule", "linear", "--diffusion-steps", "100",
                                 "--batch-size", "2", "--steps", "1", "--lr", "1e-12"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())["init"]
    assert record["source"] == "openai" and record["kind"] == "diffusion"
    state = torch.load(bare, weights_only=True)
    tuned = newest(out)["model"]
    assert all(torch.allclose(tuned[k], state[k], atol=1e-9) for k in state)


def test_classifier_new_head_and_frozen_encoder(base_runs, tmp_path):
    out = tmp_path / "clf3"
    data = labelled_npz(tmp_path / "three.npz", 3)
    result = invoke(*["train-classifier", str(data), "--out", str(out), "--init", str(base_runs["clf"]),
                                 "--freeze-encoder", "--val-fraction", "0", "--batch-size", "4", "--steps", "2", "--lr", "1e-2"])
    assert result.exit_code == 0, result.output
    assert "4 classes -> 3: a new head" in result.output and "freshly initialised" in result.output
    source = init_weights(base_runs["clf"])
    tuned = newest(out)["model"]
    head = [k for k in tuned if k.startswith("out.")]
    assert head
    for name, value in tuned.items():
        if not name.startswith("out."):
            assert torch.equal(value, source[name]), f"{name} changed under --freeze-encoder"
    changed = [k for k in head if k in source and tuned[k].shape == source[k].shape and not torch.equal(tuned[k], source[k])]
    assert changed, "the head did not train"
    assert json.loads((out / "run.json").read_text())["config"]["train"]["freeze_encoder"] is True


def test_classifier_same_classes_keeps_the_head(base_runs, tmp_path):
    source = load_init(base_runs["clf"], kinds=("classifier",))
    from adm_cli.nn import NoisyClassifier
    from adm_cli.train.init import classifier_config_from_init

    config = classifier_config_from_init(source, data_classes=4, given={})
    model = NoisyClassifier(config)
    assert transfer_weights(model, source) == []
    old = source.loaded.model.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items())


def test_resume_before_the_first_checkpoint_starts_from_the_init_file_again(base_runs, tmp_path):
    base = tmp_path / "base.pt"
    base.write_bytes(sorted((base_runs["cond"] / "checkpoints").glob("step-*.pt"))[-1].read_bytes())
    out = tmp_path / "ft"
    adm("train-diffusion", base_runs["four"], "--out", out, "--init", base, *RUN, "--steps", "1", "--lr", "1e-12")
    for ckpt in (out / "checkpoints").glob("*.pt"):
        ckpt.unlink()  # as if killed before the first save
    (out / "metrics.jsonl").unlink()
    adm("train-diffusion", "--out", out, "--resume", "--quiet")
    source = read_checkpoint(base)
    source = source["ema"][next(iter(source["ema"]))]
    assert all(torch.allclose(v, source[k], atol=1e-9) for k, v in newest(out)["model"].items())
    for ckpt in (out / "checkpoints").glob("*.pt"):
        ckpt.unlink()
    base.write_bytes(base.read_bytes() + b"\0")  # the file changed
    assert "changed since the run started" in adm_fails("train-diffusion", "--out", out, "--resume")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model-channels", "64"], "--init fixes the architecture; drop --model-channels 64 (the checkpoint has 32)"),
        (["--image-size", "16"], "--image-size 16 (the checkpoint has 8)"),
        (["--schedule", "linear"], "--init fixes the noise schedule; drop --schedule linear (the checkpoint has cosine)"),
        (["--low-res-size", "4"], "--low-res-size 4 (the checkpoint has None)"),
    ],
)
def test_options_that_would_change_the_checkpoint_are_refused(base_runs, tmp_path, extra, message):
    out = tmp_path / "x"
    assert message in adm_fails("train-diffusion", base_runs["four"], "--out", out, "--init", base_runs["cond"], *extra)
    assert not out.exists()


def test_the_same_command_resumes_with_init_and_another_file_is_refused(base_runs, tmp_path):
    out = tmp_path / "ft"
    command = ["train-diffusion", base_runs["four"], "--out", out, "--init", base_runs["cond"], *RUN, "--lr", "1e-5"]
    adm(*command, "--steps", "1")
    adm(*command, "--steps", "2", "--resume")
    assert newest(out)["step"] == 2
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    message = adm_fails("train-diffusion", "--out", out, "--init", base_runs["uncond"], "--resume")
    assert "is not the file the run started from" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_bad_init_files_are_refused_and_leave_no_run(base_runs, models, tmp_path):
    data = base_runs["four"]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    sr = tmp_path / "sr.pt"
    from tests.conftest import write_unet
    import dataclasses

    write_unet(sr, dataclasses.replace(TINY_UNET, low_res_size=8, num_classes=None))
    cases = [
        (["train-diffusion", data, "--init", base_runs["clf"]], "is a classifier checkpoint, not a diffusion or super-res one (adm train-classifier --init takes it)"),
        (["train-diffusion", data, "--init", corrupt], "corrupt.pt"),
        (["train-diffusion", data, "--init", tmp_path / "missing.pt"], "missing.pt"),
        (["train-diffusion", data, "--init", sr], "is a super-resolution model (8->16); pass --low-res-size 8"),
        (["train-classifier", data, "--init", base_runs["cond"]], "is a diffusion checkpoint, not a classifier one"),
        (["train-classifier", data, "--freeze-encoder"], "--freeze-encoder needs --init"),
        (["train-classifier", data, "--init", models["classifier"], "--image-size", "8"], "--image-size 8 differs from the --init classifier's 16x16"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert message in adm_fails(*args, "--out", out), args
        assert not out.exists(), args


def test_unit_refusals(base_runs):
    source = load_init(base_runs["uncond"], kinds=("diffusion",))
    with pytest.raises(ConfigError, match="--class-cond needs labelled data"):
        diffusion_configs_from_init(source, data_classes=None, class_cond=True, null_class=False, unet={}, diffusion={})
    with pytest.raises(ConfigError, match="--label-dropout needs a class-conditional model"):
        diffusion_configs_from_init(source, data_classes=None, class_cond=None, null_class=True, unet={}, diffusion={})
    assert isinstance(source, InitSource)


def test_openai_published_models_fine_tune_to_other_classes_without_flags():
    """OpenAI's 64x64 ImageNet model and classifier (their real parameter shapes, weights on the
    meta device): the run's configs are the published ones with the user's 7 classes, and only
    the label embedding / the classifier's last layer change shape."""
    import gzip

    from adm_cli.checkpoint import from_openai_state_dict
    from adm_cli.nn import NoisyClassifier
    from adm_cli.train.init import classifier_config_from_init

    shapes = json.loads(gzip.open(Path(__file__).parent.parent / "assets/golden/openai/shapes.json.gz", "rt").read())
    meta = lambda name: {k: torch.empty(v, device="meta") for k, v in shapes[name].items()}  # noqa: E731
    unet_source = InitSource(from_openai_state_dict(Path("64x64_diffusion.pt"), meta("64x64_diffusion.pt"), overrides={}), "0" * 64)
    unet, diffusion = diffusion_configs_from_init(unet_source, data_classes=7, class_cond=None, null_class=True, unet={}, diffusion={})
    assert (unet.num_classes, unet.null_class, unet.image_size) == (7, True, 64)
    assert diffusion == unet_source.loaded.diffusion
    with torch.device("meta"):
        built = build_unet(unet).state_dict()
    differ = {k for k, v in built.items() if tuple(v.shape) != tuple(shapes["64x64_diffusion.pt"][k])}
    assert differ == {"label_emb.weight"} and tuple(built["label_emb.weight"].shape) == (8, 768)
    assert "1000 classes -> 7" in unet_source.changes[0]

    clf_source = InitSource(from_openai_state_dict(Path("64x64_classifier.pt"), meta("64x64_classifier.pt"), overrides={}), "0" * 64)
    config = classifier_config_from_init(clf_source, data_classes=7, given={})
    with torch.device("meta"):
        built = NoisyClassifier(config).state_dict()
    differ = {k for k, v in built.items() if tuple(v.shape) != tuple(shapes["64x64_classifier.pt"][k])}
    assert differ and all(k.startswith("out.") for k in differ), differ
