"""Self-describing checkpoints, and OpenAI's bare guided-diffusion state dicts.

An adm checkpoint is one `torch.save`d dict of plain types and tensors, loadable with
`torch.load(path, weights_only=True)`:

    format: "adm-checkpoint", format_version: 1, adm_version: str
    kind: "diffusion" | "super-res" | "classifier"
    config: {"unet": {...}, "diffusion": {...}}  or  {"classifier": {...}, "diffusion": {...}}
    model: state dict, ema: {rate (str): state dict}, step: int
    optimizer / scaler / rng: training state (written by training; ignored for sampling)
    digest: {section: "sha256:<hex>"} over the tensors of `model`, each `ema/RATE` and the
        training state (see `tensor_digest`); loading for sampling verifies the weights it uses,
        resuming verifies all; files written before it existed have none and load unchecked

`save_checkpoint` writes to a temporary name, flushes it to disk and renames it, so a kill or a
full disk never leaves a half-written checkpoint nor touches the previous one.

OpenAI's published files are bare state dicts. Their structure (width, levels, blocks, classes,
learned σ, up/down blocks, attention levels, super-resolution input) is read from the parameter
shapes; what shapes cannot tell (image size, heads, attention order, schedule) comes from the
table of published configurations (`config.DIFFUSION_PRESETS`), matched by structure, or from
explicit overrides. Every inferred configuration is verified by rebuilding the network and
comparing all parameter shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from adm_cli.version import __version__
from adm_cli.config import (
    CLASSIFIER_PRESETS,
    DIFFUSION_PRESETS,
    ClassifierConfig,
    ConfigError,
    DiffusionConfig,
    UNetConfig,
)
from adm_cli.files import fsync_dir, write_reason
from adm_cli.nn import NoisyClassifier, build_unet

FORMAT = "adm-checkpoint"
FORMAT_VERSION = 1
DIGEST_KEY = "digest"
Kind = Literal["diffusion", "super-res", "classifier"]

# Overrides a user may give for what a bare state dict's shapes cannot tell.
UNET_OVERRIDES = ("image_size", "num_heads", "num_head_channels", "attention_order", "low_res_size")
DIFFUSION_OVERRIDES = ("steps", "schedule", "rescale_timesteps", "mean_type")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not describe a usable model (one-line message)."""


@dataclass
class Loaded:
    """A ready network (eval mode, CPU, float32) and what describes it."""

    kind: Kind
    model: nn.Module
    config: UNetConfig | ClassifierConfig
    diffusion: DiffusionConfig | None
    step: int | None
    source: Literal["adm", "openai"]
    preset: str | None
    path: Path

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# --------------------------------------------------------------------------- saving


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed.

    An adm payload gets its tensor digest here. Any failure (a full disk above all) removes the
    temporary file, leaves whatever `path` held before untouched, and is one CheckpointError line.
    """
    path = Path(path)
    if payload.get("format") == FORMAT:
        payload = {**{k: v for k, v in payload.items() if k != DIGEST_KEY}, DIGEST_KEY: tensor_digest(payload)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {write_reason(e)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _tensors(value: Any, name: str = ""):
    """(name, tensor) for every tensor in a nested dict/list payload, in a fixed order (dict keys
    sorted, so the digest does not depend on insertion order)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            yield from _tensors(value[key], f"{name}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{name}/{i}")


def _sections(payload: Mapping[str, Any]):
    """(name, value) for the parts a digest covers separately: each top-level entry, and each EMA
    rate on its own, so that sampling checks only the weights it loads."""
    for key in sorted(payload):
        if key == DIGEST_KEY:
            continue
        value = payload[key]
        if key == "ema" and isinstance(value, Mapping):
            for rate in sorted(value):
                yield f"ema/{rate}", value[rate]
        else:
            yield key, value


def _sha256(value: Any, name: str) -> str | None:
    """SHA-256 over every tensor in `value`: each one's name, dtype, shape and bytes (None when
    it holds no tensor). ~1.4 GB/s here."""
    h, count = hashlib.sha256(), 0
    for tname, tensor in _tensors(value, name):
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(f"{tname}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
        count += 1
    return "sha256:" + h.hexdigest() if count else None


def tensor_digest(payload: Mapping[str, Any]) -> dict[str, str]:
    """{section: SHA-256} over every tensor of a checkpoint payload (except the digest itself):
    `model`, each `ema/RATE`, `train_state`, ... Catches flipped bytes in the weights, which
    torch.load does not (it checks no CRC)."""
    digests = {name: _sha256(value, name) for name, value in _sections(payload)}
    return {name: d for name, d in digests.items() if d is not None}


def verify_digest(path: Path, data: Mapping[str, Any], sections: Sequence[str] | None = None) -> None:
    """Raise CheckpointError when a stored digest does not match the tensors of `sections` (None:
    every section, and no section may be missing or added). No digest: nothing to check, as in
    checkpoints written before adm stored one, and OpenAI's bare state dicts."""
    stored = data.get(DIGEST_KEY)
    if stored is None or data.get("format") != FORMAT:
        return
    if not isinstance(stored, Mapping) or not all(isinstance(v, str) for v in stored.values()):
        raise CheckpointError(f"{path}: corrupt checkpoint (unreadable digest field)")
    parts = dict(_sections(data))
    if sections is None:
        mismatch = tensor_digest(data) != dict(stored)
    else:
        mismatch = any(n not in stored or n not in parts or _sha256(parts[n], n) != stored[n] for n in sections)
    if mismatch:
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its tensors do not match the checksum stored in it "
            "(damaged on disk or in a copy); use another checkpoint"
        )


def make_payload(
    *,
    kind: Kind,
    model: nn.Module,
    config: UNetConfig | ClassifierConfig,
    diffusion: DiffusionConfig | None,
    step: int = 0,
    ema: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    section = "classifier" if kind == "classifier" else "unet"
    cfg: dict[str, Any] = {section: config.to_dict()}
    if diffusion is not None:
        cfg["diffusion"] = diffusion.to_dict()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adm_version": __version__,
        "kind": kind,
        "config": cfg,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": {str(rate): dict(sd) for rate, sd in (ema or {}).items()},
        "step": int(step),
        **dict(extra or {}),
    }


# --------------------------------------------------------------------------- loading


def read_checkpoint(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into one CheckpointError line;
    an adm checkpoint's tensor digest is verified whole (unless `verify` is False: the caller
    verifies the sections it uses)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # PyTorch's aside on pickle protocols is no news to a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = _torch_load(path)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            found = _pickled_objects(path)
            if found is not None:  # a well-formed pickle of Python objects, not garbage bytes
                raise CheckpointError(_unsafe_message(path, found)) from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a pickle of tensors)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    if verify:
        verify_digest(path, data)
    return data


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), memory-mapped where the file allows it (the zip format that
    torch.save has written since PyTorch 1.6, as OpenAI's files are): the tensors are views of the
    file's pages instead of a second copy in memory, and a model built on the meta device takes
    them as they are (`_load_weights` assigns). Older formats are read whole."""
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, ValueError, OSError):
            pass  # e.g. a zip whose records are not aligned for mapping: read it whole below
    return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


_SAFE_MODULES = ("torch", "collections", "numpy", "_codecs")


def _pickled_objects(path: Path) -> list[str] | None:
    """The globals (module.name) a pickle in `path` refers to, read with pickletools (which
    executes nothing); None when it is not a well-formed pickle. Those from torch and the few
    modules a checkpoint may use come last."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                raw = z.read(name)
        else:
            with open(path, "rb") as f:
                raw = f.read(1 << 26)
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(raw):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - any parse failure: not a pickle
        return None
    return sorted(found, key=lambda g: g.split(".")[0] in _SAFE_MODULES)


def _unsafe_message(path: Path, found: list[str]) -> str:
    """PyTorch's refusal is a long how-to-bypass text; say plainly what the file is."""
    what = f" (e.g. {found[0]})" if found else ""
    return (
        f"{path}: not a safe checkpoint: it holds Python objects{what} that weights_only loading "
        "refuses to run; adm never executes them"
    )


def load_model(
    path: str | Path,
    *,
    weights: Literal["ema", "model"] = "ema",
    overrides: Mapping[str, Any] | None = None,
    expect: Kind | tuple[Kind, ...] | None = None,
) -> Loaded:
    """Load an adm or OpenAI checkpoint to a ready network; no architecture flags needed.

    `overrides` (keys of UNET_OVERRIDES / DIFFUSION_OVERRIDES) supply or replace what a bare
    state dict cannot tell. `expect` restricts the accepted kinds.
    """
    path = resolve_checkpoint(path)
    data = read_checkpoint(path, verify=False)  # _load_adm verifies the weights it takes
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if data.get("format") == FORMAT:
        loaded = _load_adm(path, data, weights=weights, overrides=overrides)
    elif _is_state_dict(data):
        loaded = from_openai_state_dict(path, data, overrides=overrides)
    else:
        raise CheckpointError(f"{path}: neither an adm checkpoint nor a guided-diffusion state dict")
    if expect is not None:
        kinds = (expect,) if isinstance(expect, str) else expect
        if loaded.kind not in kinds:
            hint = {"super-res": " (sample it with adm upsample)", "classifier": " (pass it as --classifier)"}
            raise CheckpointError(
                f"{path}: is a {loaded.kind} checkpoint, expected {' or '.join(kinds)}{hint.get(loaded.kind, '')}"
            )
    return loaded


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training run directory -> its newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("step-*.pt")) if (path / "checkpoints").is_dir() else []
        if not found:
            raise CheckpointError(f"{path} is a directory without checkpoints (expected RUN/checkpoints/step-*.pt)")
        return found[-1]
    return path


def _is_state_dict(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())


def _apply_overrides(unet: UNetConfig, diffusion: DiffusionConfig | None, overrides: Mapping[str, Any]):
    unet_kw = {k: overrides[k] for k in UNET_OVERRIDES if k in overrides and hasattr(unet, k)}
    if "num_heads" in unet_kw and "num_head_channels" not in unet_kw:
        unet_kw["num_head_channels"] = None  # an explicit head count replaces channels per head
    if "image_size" in unet_kw and "attention_resolutions" not in unet_kw:
        # Keep the attention levels (downsampling factors), re-expressed in pixels.
        unet_kw["attention_resolutions"] = tuple(unet_kw["image_size"] // ds for ds in unet.attention_ds)
    unet = dataclasses.replace(unet, **unet_kw) if unet_kw else unet
    if diffusion is not None:
        diff_kw = {k: overrides[k] for k in DIFFUSION_OVERRIDES if k in overrides}
        diffusion = dataclasses.replace(diffusion, **diff_kw) if diff_kw else diffusion
    return unet, diffusion


def _load_adm(path: Path, data: dict[str, Any], *, weights: str, overrides: Mapping[str, Any]) -> Loaded:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: adm checkpoint format {version} is not supported (this adm reads {FORMAT_VERSION})")
    kind = data.get("kind")
    cfg = data.get("config", {})
    try:
        diffusion = DiffusionConfig.from_dict(cfg["diffusion"]) if "diffusion" in cfg else None
        if kind == "classifier":
            config: UNetConfig | ClassifierConfig = ClassifierConfig.from_dict(cfg["classifier"])
        elif kind in ("diffusion", "super-res"):
            config, diffusion = _apply_overrides(UNetConfig.from_dict(cfg["unet"]), diffusion, overrides)
        else:
            raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid stored config ({e})") from None
    state, section = data.get("model"), "model"
    if weights == "ema" and data.get("ema"):
        rate = next(iter(data["ema"]))  # the first (slowest) EMA rate
        state, section = data["ema"][rate], f"ema/{rate}"
    verify_digest(path, data, [section])
    model = _build(config, device="meta")
    _load_weights(path, model, state)
    return Loaded(kind, model, config, diffusion, data.get("step"), "adm", None, path)


def _build(config: UNetConfig | ClassifierConfig, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build without initialising weights (on the meta device) when they are loaded right after."""
    with torch.device(device):
        return NoisyClassifier(config) if isinstance(config, ClassifierConfig) else build_unet(config)


def _load_weights(path: Path, model: nn.Module, state: Any) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: has no model weights")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{path}: weights do not fit the configuration: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()


# --------------------------------------------------------------------------- OpenAI state dicts


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(sd[key].shape) if key in sd else None


def _block_indices(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def _infer_levels(sd, n_input: int, has_up: list[bool] | None) -> list[int]:
    """Candidate res-blocks-per-level R with n_input = L·(R+1) (the stem conv + L·R res blocks
    + (L-1) downsamplers). The decoder pins R down when there is one."""
    if has_up is not None:
        first_up = next((j for j, up in enumerate(has_up) if up), None)
        return [first_up if first_up is not None else len(has_up) - 1]
    return [r for r in range(1, n_input) if n_input % (r + 1) == 0]


def _structure(sd: Mapping[str, torch.Tensor], prefix: str, R: int, n_input: int) -> dict[str, Any] | None:
    """Read width, channel multipliers, attention levels and up/down style for a given R."""
    mc = sd["time_embed.0.weight"].shape[1]
    L = n_input // (R + 1)
    mult, attention_ds, updown = [], [], None
    for level in range(L):
        first = 1 + level * (R + 1)
        for r in range(R):
            if _shape(sd, f"{prefix}.{first + r}.0.out_layers.3.weight") is None:
                return None
        out = sd[f"{prefix}.{first + R - 1}.0.out_layers.3.weight"].shape[0]
        mult.append(out / mc)
        if f"{prefix}.{first}.1.qkv.weight" in sd:
            attention_ds.append(2**level)
        if level < L - 1:
            down = f"{prefix}.{first + R}.0"
            is_res = f"{down}.in_layers.0.weight" in sd
            if not is_res and f"{down}.op.weight" not in sd:
                return None
            conv = _shape(sd, f"{down}.in_layers.2.weight") or _shape(sd, f"{down}.op.weight")
            if conv is None or conv[0] != conv[1] or f"{down}.skip_connection.weight" in sd:
                return None  # a downsampler keeps its channel count
            if any(k.startswith(f"{prefix}.{first + R}.1.") for k in sd):
                return None  # and stands alone in its block
            if updown is not None and updown != is_res:
                return None
            updown = is_res
    emb_out = sd[f"{prefix}.1.0.emb_layers.1.weight"].shape[0]
    res_out = sd[f"{prefix}.1.0.out_layers.3.weight"].shape[0]
    return dict(
        model_channels=mc,
        num_res_blocks=R,
        channel_mult=tuple(int(m) if float(m).is_integer() else m for m in mult),
        attention_ds=tuple(attention_ds),
        resblock_updown=bool(updown),
        use_scale_shift_norm=emb_out == 2 * res_out,
    )


def _same_shapes(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> bool:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return own == {k: tuple(v.shape) for k, v in sd.items()}


def from_openai_state_dict(path: Path, sd: dict[str, torch.Tensor], *, overrides: Mapping[str, Any]) -> Loaded:
    """Read a bare guided-diffusion state dict (`path` names it in messages)."""
    if "time_embed.0.weight" not in sd or "input_blocks.0.0.weight" not in sd:
        raise CheckpointError(f"{path}: a state dict, but not of a guided-diffusion UNet or classifier")
    if _block_indices(sd, "output_blocks") == 0:
        return _load_openai_classifier(path, sd, overrides=overrides)
    return _load_openai_unet(path, sd, overrides=overrides)


def _load_openai_unet(path: Path, sd: dict[str, torch.Tensor], *, overrides: Mapping[str, Any]) -> Loaded:
    n_in, n_out = _block_indices(sd, "input_blocks"), _block_indices(sd, "output_blocks")
    has_up = []
    for j in range(n_out):
        keys = [k for k in sd if k.startswith(f"output_blocks.{j}.")]
        has_up.append(any(".conv.weight" in k or k.startswith(f"output_blocks.{j}.1.in_layers") or
                          k.startswith(f"output_blocks.{j}.2.in_layers") for k in keys))
    (R,) = _infer_levels(sd, n_in, has_up)
    found = _structure(sd, "input_blocks", R, n_in)
    if found is None:
        raise CheckpointError(f"{path}: unrecognised UNet layout (cannot read its levels from the parameter names)")
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    out_ch = sd["out.2.weight"].shape[0]
    num_classes = sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else None
    # Image channels: learned σ doubles the output; super-resolution doubles the input.
    if out_ch == 2 * in_ch:
        channels, learn_sigma, super_res = in_ch, True, False
    elif in_ch == 2 * out_ch:
        channels, learn_sigma, super_res = out_ch, False, True
    elif in_ch == out_ch and in_ch in (2, 6):
        channels, learn_sigma, super_res = in_ch // 2, True, True
    else:
        channels, learn_sigma, super_res = in_ch, False, False
    attention_ds = found.pop("attention_ds")
    structural = dict(found, in_channels=channels, num_classes=num_classes, learn_sigma=learn_sigma)

    preset = None
    for name, spec in DIFFUSION_PRESETS.items():
        u = spec.unet
        if (
            u.is_super_res == super_res
            and u.attention_ds == attention_ds
            and all(getattr(u, k) == v for k, v in structural.items() if k != "channel_mult")
            and tuple(u.channel_mult) == tuple(float(m) for m in structural["channel_mult"])
        ):
            preset = name
            unet, diffusion = spec.unet, spec.diffusion
            break
    if preset is None:
        needed = [k for k in ("image_size",) if k not in overrides]
        if "num_heads" not in overrides and "num_head_channels" not in overrides:
            needed.append("num_heads or num_head_channels")
        if "schedule" not in overrides:
            needed.append("schedule")
        if needed:
            flags = ", ".join("--" + n.replace("_", "-").replace(" or num-head-channels", " or --num-head-channels") for n in needed)
            raise CheckpointError(
                f"{path}: structure matches no published guided-diffusion model "
                f"(width {found['model_channels']}, mult {found['channel_mult']}, {R} blocks); pass {flags} "
                "(and --attention-order/--diffusion-steps if not legacy/1000)"
            )
        size = int(overrides["image_size"])
        try:
            unet = UNetConfig(
                image_size=size,
                attention_resolutions=tuple(size // ds for ds in attention_ds),
                low_res_size=size // 4 if super_res else None,
                **structural,
            )
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None
        diffusion = DiffusionConfig(var_type="learned_range" if learn_sigma else "fixed_small")
    try:
        unet, diffusion = _apply_overrides(unet, diffusion, overrides)
        model = _build(unet, device="meta")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    _load_weights(path, model, sd)  # names the first differences if the shapes disagree
    kind: Kind = "super-res" if super_res else "diffusion"
    return Loaded(kind, model, unet, diffusion, None, "openai", preset, path)


def _load_openai_classifier(path: Path, sd: dict[str, torch.Tensor], *, overrides: Mapping[str, Any]) -> Loaded:
    n_in = _block_indices(sd, "input_blocks")
    pos = _shape(sd, "out.2.positional_embedding")
    if pos is not None:
        pool = "attention"
        num_classes = sd["out.2.c_proj.weight"].shape[0]
    elif "out.3.weight" in sd and sd["out.3.weight"].dim() == 4:
        pool, num_classes = "adaptive", sd["out.3.weight"].shape[0]
    elif "out.1.weight" in sd:
        pool, num_classes = "spatial_v2", sd["out.3.weight"].shape[0]
    elif "out.2.weight" in sd:
        pool, num_classes = "spatial", sd["out.2.weight"].shape[0]
    else:
        raise CheckpointError(f"{path}: unrecognised classifier head")
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    for R in _infer_levels(sd, n_in, None):
        found = _structure(sd, "input_blocks", R, n_in)
        if found is None:
            continue
        L = len(found["channel_mult"])
        if pos is not None:
            side = round((pos[1] - 1) ** 0.5)
            size = side * 2 ** (L - 1)
        elif "image_size" in overrides:
            size = int(overrides["image_size"])
        else:
            raise CheckpointError(f"{path}: a {pool}-pooled classifier does not record its image size; pass --classifier-image-size")
        attention_ds = found.pop("attention_ds")
        preset = next((n for n, c in CLASSIFIER_PRESETS.items() if c.image_size == size and c.num_res_blocks == R), None)
        try:
            config = ClassifierConfig(
                image_size=size,
                in_channels=in_ch,
                num_classes=num_classes,
                pool=pool,
                attention_resolutions=tuple(size // ds for ds in attention_ds if size % ds == 0),
                num_head_channels=overrides.get("num_head_channels", 64),
                **found,
            )
        except ConfigError:
            continue
        model = _build(config, device="meta")
        if _same_shapes(model, sd):
            _load_weights(path, model, sd)
            return Loaded("classifier", model, config, None, None, "openai", preset, path)
    raise CheckpointError(f"{path}: could not read a classifier structure from the parameter shapes")


# --------------------------------------------------------------------------- misc


def file_digest(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, used to fingerprint resumable outputs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
