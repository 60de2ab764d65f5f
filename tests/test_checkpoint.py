"""Checkpoints: self-describing round trip, OpenAI state dicts read from their shapes, bad files."""

import gzip
import json
import pickle
from pathlib import Path

import pytest
import torch

from adm_cli.checkpoint import CheckpointError, from_openai_state_dict, load_model, read_checkpoint
from adm_cli.config import DIFFUSION_PRESETS, UNetConfig
from adm_cli.nn import build_unet
from tests.conftest import TINY_UNET, randomized, write_unet

SHAPES = json.loads(gzip.open(Path(__file__).parent.parent / "assets/golden/openai/shapes.json.gz", "rt").read())
EXPECTED = {
    "64x64_diffusion.pt": ("diffusion", "imagenet64"),
    "128x128_diffusion.pt": ("diffusion", "imagenet128"),
    "256x256_diffusion.pt": ("diffusion", "imagenet256"),
    "256x256_diffusion_uncond.pt": ("diffusion", "imagenet256-uncond"),
    "512x512_diffusion.pt": ("diffusion", "imagenet512"),
    "lsun_bedroom.pt": ("diffusion", "imagenet256-uncond"),
    "64_256_upsampler.pt": ("super-res", "upsample64-256"),
    "128_512_upsampler.pt": ("super-res", "upsample128-512"),
    "64x64_classifier.pt": ("classifier", "imagenet64"),
    "128x128_classifier.pt": ("classifier", "imagenet128"),
    "256x256_classifier.pt": ("classifier", "imagenet256"),
    "512x512_classifier.pt": ("classifier", "imagenet512"),
}


def meta_state_dict(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_structures_are_read_from_shapes(name):
    loaded = from_openai_state_dict(Path(name), meta_state_dict(SHAPES[name]), overrides={})
    kind, preset = EXPECTED[name]
    assert (loaded.kind, loaded.preset) == (kind, preset)
    size = int(name.split("x")[0]) if "x" in name.split("_")[0] else None
    if size:
        assert loaded.config.image_size == size
    if kind != "classifier":
        assert loaded.diffusion.var_type == "learned_range"
        assert loaded.diffusion.schedule == ("cosine" if name.startswith("64x64") else "linear")
    assert {k: list(v.shape) for k, v in loaded.model.state_dict().items()} == SHAPES[name]


def test_published_64_uses_new_attention_order_and_head_channels():
    loaded = from_openai_state_dict(Path("64"), meta_state_dict(SHAPES["64x64_diffusion.pt"]), overrides={})
    assert loaded.config.attention_order == "new"
    assert loaded.config.num_head_channels == 64
    loaded = from_openai_state_dict(Path("128"), meta_state_dict(SHAPES["128x128_diffusion.pt"]), overrides={})
    assert (loaded.config.attention_order, loaded.config.num_heads, loaded.config.num_head_channels) == ("legacy", 4, None)


def test_overrides_replace_table_values():
    sd = meta_state_dict(SHAPES["256x256_diffusion.pt"])
    loaded = from_openai_state_dict(Path("x"), sd, overrides={"schedule": "cosine", "num_heads": 8, "steps": 4000})
    assert loaded.diffusion.schedule == "cosine" and loaded.diffusion.steps == 4000
    assert loaded.config.num_heads == 8 and loaded.config.num_head_channels is None


def test_adm_round_trip_gives_same_outputs(tmp_path):
    path = write_unet(tmp_path / "m.pt")
    assert read_checkpoint(path)["format"] == "adm-checkpoint"  # weights_only load works
    loaded = load_model(path)
    ref = randomized(build_unet(TINY_UNET))
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 50]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y=y), ref(x, t, y=y))
    assert loaded.kind == "diffusion" and loaded.step == 7 and loaded.source == "adm"


def test_bare_state_dict_of_custom_structure_needs_flags(tmp_path):
    model = randomized(build_unet(TINY_UNET))
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="--image-size.*--num-heads.*--schedule"):
        load_model(path)
    loaded = load_model(path, overrides={"image_size": 16, "num_head_channels": 16, "schedule": "linear", "steps": 100})
    assert loaded.source == "openai" and loaded.config == TINY_UNET
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 50]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y=y), model(x, t, y=y))


def _mapped_from(path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from `path` (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(" " + str(path)):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_weights_are_mapped_from_the_file_not_copied(tmp_path):
    """adm and OpenAI files load memory-mapped, and the model built on the meta device takes the
    mapped tensors as its parameters (no second copy of the weights); a legacy (pre-zip) file
    still loads, read whole."""
    adm_file = write_unet(tmp_path / "m.pt")
    bare = tmp_path / "bare.pt"
    torch.save(randomized(build_unet(TINY_UNET)).state_dict(), bare)
    flags = {"image_size": 16, "num_head_channels": 16, "schedule": "linear", "steps": 100}
    for path, overrides in ((adm_file, None), (bare, flags)):
        params = list(load_model(path, overrides=overrides).model.parameters())
        ranges = _mapped_from(path)
        assert ranges and all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in params), path
    legacy = tmp_path / "legacy.pt"
    torch.save(randomized(build_unet(TINY_UNET)).state_dict(), legacy, _use_new_zipfile_serialization=False)
    loaded = load_model(legacy, overrides=flags)
    assert not _mapped_from(legacy)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 50]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y=y), load_model(bare, overrides=flags).model(x, t, y=y))


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(junk)
    truncated = tmp_path / "truncated.pt"
    good = write_unet(tmp_path / "good.pt").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        load_model(truncated)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_untrusted_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert "must never run" not in capsys.readouterr().out


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = write_unet(tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["config"]["unet"]["model_channels"] = 64
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_wrong_kind_is_refused(models):
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, expected diffusion"):
        load_model(models["classifier"], expect="diffusion")


def test_presets_are_valid():
    for spec in DIFFUSION_PRESETS.values():
        assert isinstance(spec.unet, UNetConfig)
