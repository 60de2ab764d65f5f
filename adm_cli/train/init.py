"""Fine-tuning: start a training run from the weights of a checkpoint (`--init`).

Any checkpoint `adm sample` loads can start a run: OpenAI's published files, an adm checkpoint,
or a run directory (its newest checkpoint). The architecture and noise schedule come from the
checkpoint; the optimizer starts fresh and the EMA starts from the initial weights (the loop
copies the model's weights into every EMA buffer at step 0).

What may differ from the checkpoint, and how the weights carry over:

- Diffusion models, the class-label embedding (`label_emb.weight`, one row per class plus the
  null class of classifier-free guidance):
    same classes                      kept as they are
    conditional → other class count   every new row starts at the mean of the old class rows (the
                                      model's "average class"), so no class starts from noise
    unconditional → conditional       every row starts at zero: the embedding is added to the
                                      timestep embedding, so the model starts as exactly the
                                      unconditional one it was
    conditional → unconditional       the embedding is dropped (the model then sees none)
    a null class added (--label-dropout on a model without one)
                                      the class rows are kept, the null row is their mean
  Everything else is copied unchanged; dropout may be set anew (a training setting).
- Classifiers, the head: the parameters whose shape depends on the class count (the last layer
  of `out`) keep their fresh initialisation when the count differs; all others are copied.
  `freeze_encoder` (TrainConfig) trains only `out.*`, the pooling head.

The run records where it started (`run.json` "init": file, SHA-256, source, step, weights, and
what changed); a resume before the first checkpoint starts from the same file again, refusing it
if its SHA-256 changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from adm_cli.checkpoint import CheckpointError, Loaded, file_digest, load_model
from adm_cli.config import ClassifierConfig, ConfigError, DiffusionConfig, UNetConfig

__all__ = [
    "InitSource",
    "LABEL_EMBEDDING",
    "classifier_config_from_init",
    "diffusion_configs_from_init",
    "load_init",
    "reload_init",
    "transfer_weights",
]

LABEL_EMBEDDING = "label_emb.weight"

# UNet fields a fine-tuning run may set anew (training settings, not architecture).
UNET_TRAINABLE_FIELDS = ("dropout",)


@dataclass
class InitSource:
    """The checkpoint a run starts from: the loaded network and its record for run.json."""

    loaded: Loaded
    sha256: str
    changes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "path": str(self.loaded.path.resolve()),
            "sha256": self.sha256,
            "source": self.loaded.source,
            "kind": self.loaded.kind,
            "step": self.loaded.step,
            "preset": self.loaded.preset,
            "weights": "ema" if self.loaded.source == "adm" else "the file's",
            "changes": list(self.changes),
        }


def load_init(path: str | Path, *, kinds: tuple[str, ...], overrides: Mapping[str, Any] | None = None) -> InitSource:
    """Load `--init` (file or run directory) expecting one of `kinds`; its EMA weights when it has them.

    `overrides` (the architecture options given on the command line) are used only for what a
    bare guided-diffusion state dict cannot tell, as `adm sample` does, and only when the file
    does not load without them; an adm checkpoint's stored configuration is never overridden.
    """
    try:
        loaded = load_model(path, weights="ema")
    except CheckpointError:
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if not given:
            raise
        loaded = load_model(path, weights="ema", overrides=given)
    if loaded.kind not in kinds:
        command = "adm train-classifier" if loaded.kind == "classifier" else "adm train-diffusion"
        raise CheckpointError(f"--init {loaded.path}: is a {loaded.kind} checkpoint, not a {' or '.join(kinds)} one ({command} --init takes it)")
    return InitSource(loaded, file_digest(loaded.path))


def reload_init(record: Mapping[str, Any]) -> InitSource:
    """The run's --init file again (a resume before the first checkpoint), refused if it changed."""
    path = Path(str(record.get("path")))
    if not path.is_file():
        raise CheckpointError(f"{path}: the run's --init file is gone, and the run has no checkpoint yet to resume from")
    digest = file_digest(path)
    if digest != record.get("sha256"):
        raise CheckpointError(f"{path}: the run's --init file changed since the run started (SHA-256 differs)")
    loaded = load_model(path, weights="ema", expect=(str(record.get("kind")),))  # type: ignore[arg-type]
    return InitSource(loaded, digest, list(record.get("changes", [])))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and float(a) == float(b)
    return a == b


def _refuse_changes(given: Mapping[str, Any], stored: Any, flags: Mapping[str, str], what: str) -> None:
    """One ConfigError naming every given option that differs from the checkpoint's value."""
    differ = []
    for name, value in given.items():
        if value is None or not hasattr(stored, name):
            continue
        if not _same(value, getattr(stored, name)):
            differ.append(f"{flags.get(name, '--' + name.replace('_', '-'))} {_show(value)} (the checkpoint has {_show(getattr(stored, name))})")
    if differ:
        raise ConfigError(f"--init fixes the {what}; drop {'; '.join(differ)}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Config fields whose option is not --FIELD-NAME.
UNET_FLAGS = {"use_scale_shift_norm": "--scale-shift-norm"}
DIFFUSION_FLAGS = {"steps": "--diffusion-steps", "schedule": "--schedule", "mean_type": "--prediction"}


def diffusion_configs_from_init(
    init: InitSource,
    *,
    data_classes: int | None,
    class_cond: bool | None,
    null_class: bool,
    unet: Mapping[str, Any],
    diffusion: Mapping[str, Any],
) -> tuple[UNetConfig, DiffusionConfig]:
    """The run's network and process: the checkpoint's, with the data's classes.

    `unet` / `diffusion`: the architecture options given on the command line (None = not given);
    any that differs from the checkpoint is refused (ConfigError), except dropout. `class_cond`
    None means: conditional when the data has labels. Each change is appended to `init.changes`.
    """
    loaded = init.loaded
    assert isinstance(loaded.config, UNetConfig) and loaded.diffusion is not None
    old: UNetConfig = loaded.config
    architecture = {k: v for k, v in unet.items() if k not in UNET_TRAINABLE_FIELDS}
    if architecture.get("low_res_size") is None and old.low_res_size is not None:
        raise ConfigError(
            f"{loaded.path}: is a super-resolution model ({old.low_res_size}->{old.image_size}); "
            f"pass --low-res-size {old.low_res_size} to fine-tune it as one"
        )
    _refuse_changes(architecture, old, UNET_FLAGS, "architecture")
    _refuse_changes(diffusion, loaded.diffusion, DIFFUSION_FLAGS, "noise schedule")

    if class_cond is None:
        class_cond = data_classes is not None
    if class_cond and data_classes is None:
        raise ConfigError("--class-cond needs labelled data (class sub-folders, file-name prefixes or npz arr_1)")
    if null_class and not class_cond:
        raise ConfigError("--label-dropout needs a class-conditional model")
    num_classes = data_classes if class_cond else None
    changes = init.changes
    if old.num_classes is None and num_classes is not None:
        changes.append(f"unconditional -> conditional on {num_classes} classes: a new label embedding, all zeros (starts as the unconditional model)")
    elif old.num_classes is not None and num_classes is None:
        changes.append(f"conditional on {old.num_classes} classes -> unconditional: the label embedding is dropped")
    elif old.num_classes is not None and num_classes != old.num_classes:
        changes.append(f"{old.num_classes} classes -> {num_classes}: a new label embedding, every row the mean of the old class rows")
    if num_classes is not None and null_class and not (old.null_class and old.num_classes == num_classes):
        changes.append("a null class for classifier-free guidance (--label-dropout): its row starts at the mean of the class rows")
    new = dataclasses.replace(old, num_classes=num_classes, null_class=bool(null_class and num_classes is not None))
    if unet.get("dropout") is not None and float(unet["dropout"]) != old.dropout:
        new = dataclasses.replace(new, dropout=float(unet["dropout"]))
        changes.append(f"dropout {old.dropout:g} -> {new.dropout:g}")
    return new, loaded.diffusion


def classifier_config_from_init(init: InitSource, *, data_classes: int, given: Mapping[str, Any]) -> ClassifierConfig:
    """The run's classifier: the checkpoint's, with the data's class count (a new head when it differs)."""
    old = init.loaded.config
    assert isinstance(old, ClassifierConfig)
    _refuse_changes({k: v for k, v in given.items() if k != "dropout"}, old, {}, "architecture")
    new = dataclasses.replace(old, num_classes=data_classes)
    if data_classes != old.num_classes:
        init.changes.append(f"{old.num_classes} classes -> {data_classes}: a new head (the last layer, freshly initialised)")
    if given.get("dropout") is not None and float(given["dropout"]) != old.dropout:
        new = dataclasses.replace(new, dropout=float(given["dropout"]))
        init.changes.append(f"dropout {old.dropout:g} -> {new.dropout:g}")
    return new


def _label_rows(old: Tensor, old_classes: int, new_classes: int, null: bool) -> Tensor:
    """The new label embedding (rows: new_classes + null) from the old one (see the module doc)."""
    rows = new_classes + int(null)
    if old_classes == new_classes:
        kept = old[:old_classes]
    else:
        kept = old[:old_classes].mean(dim=0, keepdim=True).expand(new_classes, -1)
    if null:
        null_row = old[old_classes : old_classes + 1] if old.shape[0] > old_classes else old[:old_classes].mean(dim=0, keepdim=True)
        kept = torch.cat([kept, null_row])
    assert kept.shape[0] == rows
    return kept.clone()


@torch.no_grad()
def transfer_weights(model: nn.Module, init: InitSource) -> list[str]:
    """Copy the checkpoint's weights into `model` (built for the run's configuration, freshly
    initialised). Returns the names of the parameters left at their fresh initialisation.
    Everything whose name and shape match is copied; the label embedding follows the module doc;
    any other mismatch is a CheckpointError (the configs were checked, so it means a bug)."""
    source: Mapping[str, Tensor] = init.loaded.model.state_dict()
    old_cfg, own = init.loaded.config, model.state_dict()
    fresh: list[str] = []
    for name, target in own.items():
        if name == LABEL_EMBEDDING and isinstance(old_cfg, UNetConfig):
            new_cfg: UNetConfig = model.config  # type: ignore[assignment]
            if old_cfg.num_classes is None:
                target.zero_()
            else:
                target.copy_(_label_rows(source[name].float(), old_cfg.num_classes, new_cfg.num_classes, new_cfg.null_class))  # type: ignore[arg-type]
            continue
        if name not in source:
            raise CheckpointError(f"{init.loaded.path}: has no {name} for the run's model")
        if tuple(source[name].shape) != tuple(target.shape):
            if isinstance(old_cfg, ClassifierConfig) and name.startswith("out."):
                fresh.append(name)  # the head of a classifier with another class count
                continue
            raise CheckpointError(f"{init.loaded.path}: {name} is {tuple(source[name].shape)}, the run's model needs {tuple(target.shape)}")
        target.copy_(source[name])
    return fresh


def freeze_encoder(model: nn.Module) -> int:
    """Train only the classifier's head (`out.*`); returns the number of frozen parameters."""
    frozen = 0
    for name, p in model.named_parameters():
        if not name.startswith("out."):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
