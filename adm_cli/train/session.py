"""Start or resume a training run: configs from a preset plus explicit options, the run
directory, the data, the backend and torch.distributed, then the loop.

A run directory records everything needed to continue (`run.json`): resuming needs only
`--out RUN --resume`; the architecture, diffusion and training options are never repeated, and
the run options (target steps, log/save/preview cadence, checkpoints kept, loggers) are kept too
unless given again. The run directory is locked while a process trains it (only rank 0 holds the lock).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from adm_cli.version import __version__
from adm_cli.backend import Backend, Dist, distributed, distributed_device, make_backend
from adm_cli.config import ClassifierConfig, ConfigError, DiffusionConfig, ModelSpec, TrainConfig, UNetConfig, preset_settings
from adm_cli.data.datasets import ImageData, open_dataset, split_holdout
from adm_cli.reporting import Reporter
from adm_cli.train.classifier import ClassifierTask
from adm_cli.train.diffusion import DiffusionTask
from adm_cli.train.init import InitSource, diffusion_configs_from_init, freeze_encoder, reload_init, transfer_weights
from adm_cli.train.loggers import Loggers, unavailable
from adm_cli.train.loop import RunOptions, TrainError, train
from adm_cli.train.objectives import default_loss
from adm_cli.train.run_dir import RunDir, RunDirError, write_json_atomic

__all__ = ["DataSpec", "build_classifier_configs", "build_diffusion_configs", "build_finetune_configs", "run_training"]


@dataclass(frozen=True)
class DataSpec:
    """How to open the training data (stored in run.json so a resume reopens it the same way)."""

    path: str
    image_size: int | None = None
    channels: int | None = None
    labels: str = "auto"
    split: str = "train"

    def open(self) -> ImageData:
        return open_dataset(
            self.path, image_size=self.image_size, channels=self.channels, labels=self.labels, split=self.split  # type: ignore[arg-type]
        )


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: v for k, v in overrides.items() if v is not None}}


def build_diffusion_configs(
    data: ImageData,
    *,
    preset: str,
    unet: dict[str, Any],
    diffusion: dict[str, Any],
    train: dict[str, Any],
    class_cond: bool | None,
) -> tuple[ModelSpec, TrainConfig]:
    """Preset values, then the data's shape and classes, then every explicitly given option."""
    image_size = unet.get("image_size") or data.image_size
    unet_kw, diff_kw, train_kw = preset_settings(preset, image_size)
    if class_cond is None:
        class_cond = data.num_classes is not None
    if class_cond and data.num_classes is None:
        raise ConfigError("--class-cond needs labelled data (class sub-folders, file-name prefixes or npz arr_1)")
    unet_kw.update(in_channels=data.channels, num_classes=data.num_classes if class_cond else None)
    unet_kw = _apply(unet_kw, unet)
    if unet.get("num_heads") is not None and unet.get("num_head_channels") is None:
        unet_kw["num_head_channels"] = None  # an explicit head count replaces channels per head
    train_kw = _apply(train_kw, train)
    if "learn_sigma" in unet and unet["learn_sigma"] is not None and "var_type" not in diffusion:
        diff_kw["var_type"] = "learned_range" if unet["learn_sigma"] else "fixed_small"
        if train.get("loss") is None:
            train_kw["loss"] = "hybrid" if unet["learn_sigma"] else "simple"
    diff_kw = _apply(diff_kw, diffusion)
    if train_kw.get("label_dropout"):
        if not unet_kw.get("num_classes"):
            raise ConfigError("--label-dropout needs a class-conditional model")
        unet_kw["null_class"] = True
    return _fitting(ModelSpec(UNetConfig(**unet_kw), DiffusionConfig(**diff_kw)), TrainConfig(**train_kw), data,
                    variance_hint="(--learn-sigma)", size_hint="; pass --image-size")


def _fitting(spec: ModelSpec, config: TrainConfig, data: ImageData, *, variance_hint: str, size_hint: str) -> tuple[ModelSpec, TrainConfig]:
    """(spec, config), refused when the loss needs a variance the model lacks or the data's size differs."""
    if config.loss == "hybrid" and not spec.diffusion.learned_variance:
        raise ConfigError(f"--loss hybrid needs a learned variance {variance_hint}")
    if data.image_size != spec.unet.image_size:
        raise ConfigError(f"the data is {data.image_size}x{data.image_size} but the model {spec.unet.image_size}x{spec.unet.image_size}{size_hint}")
    return spec, config


def build_finetune_configs(
    data: ImageData,
    init: InitSource,
    *,
    preset: str,
    unet: dict[str, Any],
    diffusion: dict[str, Any],
    train: dict[str, Any],
    class_cond: bool | None,
) -> tuple[ModelSpec, TrainConfig]:
    """A run that starts from `init` (`--init`): the checkpoint's network and schedule with the
    data's classes (`diffusion_configs_from_init`); training settings from the preset, then every
    explicitly given option. The loss defaults to the paper's for the checkpoint's variance."""
    unet_config, diffusion_config = diffusion_configs_from_init(
        init, data_classes=data.num_classes, class_cond=class_cond, null_class=bool(train.get("label_dropout")),
        unet=unet, diffusion=diffusion,
    )
    _, _, train_kw = preset_settings(preset, unet_config.image_size)
    train_kw = _apply({**train_kw, "loss": default_loss(diffusion_config)}, train)
    return _fitting(ModelSpec(unet_config, diffusion_config), TrainConfig(**train_kw), data,
                    variance_hint="(the --init model has a fixed one)", size_hint=" (--init)")


def build_classifier_configs(
    data: ImageData,
    *,
    classifier: dict[str, Any],
    diffusion: DiffusionConfig,
    train: dict[str, Any],
) -> tuple[ClassifierConfig, TrainConfig]:
    """guided-diffusion's classifier defaults (width 128, depth 2, attention 32/16/8 px where they
    exist, attention pooling, 64 channels per head) scaled to the data, then explicit options.
    Training defaults follow guided-diffusion's README recipe (lr 3e-4, weight decay 0.05); its
    linear annealing is `--lr-schedule linear`."""
    if data.num_classes is None:
        raise ConfigError("classifier training needs labelled data (class sub-folders, file-name prefixes or npz arr_1)")
    size = data.image_size
    from adm_cli.config import default_channel_mult

    sizes = [size // 2**i for i in range(len(default_channel_mult(size)))]
    base = dict(
        image_size=size,
        in_channels=data.channels,
        num_classes=data.num_classes,
        attention_resolutions=tuple(s for s in sizes if s in (32, 16, 8)) or (sizes[-1],),
    )
    kw = _apply(base, classifier)
    if classifier.get("num_head_channels") is None:
        kw["num_head_channels"] = min(64, kw.get("model_channels", 128))
    config = ClassifierConfig(**kw)
    tkw = _apply(dict(lr=3e-4, weight_decay=0.05, batch_size=64, ema_rates=(0.999,)), train)
    return config, TrainConfig(**tkw)


# Run options stored in run.json and reused by a resume unless given again ("minutes" is per
# invocation, so not stored).
STORED_OPTIONS = ("steps", "save_every", "save_minutes", "log_every", "preview_every", "eval_every", "keep",
                  "log_to", "wandb_project")


def _stored_options(options: RunOptions, preview_images: int) -> dict[str, Any]:
    stored = {k: getattr(options, k) for k in STORED_OPTIONS}
    return {**stored, "log_to": list(options.log_to), "preview_images": preview_images}  # JSON has lists


def _shown(value: Any) -> str:
    return (",".join(value) or "none") if isinstance(value, list) else str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _resumed_options(stored: dict[str, Any], options: RunOptions, preview_images: int, explicit: Collection[str] | None,
                     reporter: Reporter) -> tuple[RunOptions, int, bool]:
    """The stored options, except those given again on this command line (said on stderr when
    they change). Returns (options, preview_images, whether run.json needs updating)."""
    current = _stored_options(options, preview_images)
    merged = dict(current)
    changed = False
    for name, value in current.items():
        if name not in stored:
            changed = True  # a run.json from before options were stored: record this run's
            continue
        if explicit is None or name in explicit:
            if stored[name] != value:
                reporter.info(f"resuming with {_flag(name)} {_shown(value)} (the run had {_shown(stored[name])}; "
                              "kept for later resumes)")
                changed = True
        else:
            merged[name] = stored[name]
    preview = int(merged.pop("preview_images"))
    try:
        options = dataclasses.replace(options, **merged)
    except TypeError as e:
        raise RunDirError(f"run.json: invalid stored run options ({e})") from None
    return options, preview, changed


def _on_main(dist: Dist, action: Callable[[], None]) -> None:
    """Run `action` on rank 0 only; under torchrun, the other ranks learn whether it failed
    (so a refused run stops every process instead of leaving them waiting at a barrier)."""
    error: BaseException | None = None
    if dist.is_main:
        try:
            action()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            error = e
    if dist.world_size > 1:
        import torch
        import torch.distributed as tdist

        flag = torch.tensor([1.0 if error is not None else 0.0])
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if flag.item() > 0 and error is None:
            raise RunDirError(f"process 0 could not start the run (see its error); process {dist.rank} stops too")
    if error is not None:
        raise error


def _description(kind: str, data_spec: DataSpec, data: ImageData, configs: dict[str, Any], command: str,
                 val_fraction: float, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "options": options,
        "val_fraction": val_fraction,
        "adm_version": __version__,
        "command": command,
        "data": {**dataclasses.asdict(data_spec), "source": data.source, "size": len(data),
                 "image_size": data.image_size, "channels": data.channels, "num_classes": data.num_classes},
        "config": configs,
    }


def run_training(
    kind: str,
    out: str | Path,
    *,
    data_spec: DataSpec | None,
    make_configs,
    options: RunOptions,
    device: str | None,
    compile: bool,
    reporter: Reporter,
    resume: bool,
    command: str,
    val_fraction: float = 0.0,
    preview_images: int = 16,
    explicit: Collection[str] | None = None,
    init: InitSource | None = None,
) -> dict[str, Any]:
    """Create (or resume) the run directory, build the task and train. `make_configs(data)`
    returns the configs dict stored in run.json for a new run: {"unet"/"classifier", "diffusion", "train"}.
    `explicit`: the run options given on the command line (a resume keeps the stored values of
    the others); None means all of `options` are explicit. `init`: the checkpoint a new run
    starts from (`--init`, see `adm_cli.train.init`); `make_configs` has already used it."""
    run = RunDir(out)
    on_start = None
    _check_loggers(options)  # before a new run's directory is created
    try:
        with distributed(make_backend(device, "fp32").device) as dist:
            if resume:
                description = run.read_description()
                if description.get("kind") != kind:
                    raise RunDirError(f"{run.root} is a {description.get('kind')} run, not {kind}")
                _on_main(dist, run.lock)  # before anything in the run is read for training or touched
                description = run.read_description()  # as left by the process that held it last
                stored_options = description.get("options") or {}
                options, preview_images, update = _resumed_options(stored_options, options, preview_images, explicit, reporter)
                _check_loggers(options)
                stored = DataSpec(**{k: description["data"][k] for k in ("path", "image_size", "channels", "labels", "split")})
                if data_spec is not None and Path(data_spec.path).resolve() != Path(stored.path).resolve():
                    reporter.warn(f"resuming with data {data_spec.path} (the run started with {stored.path})")
                    stored = dataclasses.replace(stored, path=data_spec.path)
                data = stored.open()
                configs = description["config"]
                expected = description["data"]
                if (data.image_size, data.channels, data.num_classes) != (expected["image_size"], expected["channels"], expected["num_classes"]):
                    raise RunDirError("the data no longer matches the run (image size, channels or classes changed)")
                data_spec = stored
                val_fraction = float(description.get("val_fraction", val_fraction))  # the same hold-out as before
                if update:
                    updated = {**description, "options": _stored_options(options, preview_images)}
                    on_start = lambda: write_json_atomic(run.run_json, updated)  # noqa: E731 - once the resume is sure to go ahead
            else:
                if data_spec is None:
                    raise TrainError("give the training data (DATA), or --resume an existing run")
                data = data_spec.open()
                configs = make_configs(data)
                description = _description(kind, data_spec, data, configs, command, val_fraction,
                                           _stored_options(options, preview_images))
                if init is not None:
                    description["init"] = init.record()
                _on_main(dist, lambda: run.create(description))
            if dist.world_size > 1:
                import torch.distributed as tdist

                tdist.barrier()
            train_config = TrainConfig.from_dict(configs["train"])
            backend = distributed_device(make_backend(device, train_config.precision, compile=compile), dist)
            val = None
            if kind == "classifier" and val_fraction > 0:
                data, val = split_holdout(data, val_fraction, seed=train_config.seed)
            task = _make_task(kind, configs, train_config, backend, dist, data, val, preview_images)
            if description.get("init") and not run.checkpoint_steps():
                _start_from(task, init if init is not None else reload_init(description["init"]), reporter)
            if train_config.freeze_encoder:
                frozen = freeze_encoder(task.model)
                reporter.info(f"--freeze-encoder: {frozen / 1e6:.2f}M encoder parameters frozen, training the head (out.*)")
            reporter.info(_summary(kind, run, data, task, train_config, backend, dist))
            loggers = None
            if options.log_to and dist.is_main:  # only the main process imports tensorboard or wandb
                shown = {**description, "options": _stored_options(options, preview_images)}  # run.json as it will be
                loggers = Loggers(options.log_to, run.root, config=shown, reporter=reporter,
                                  wandb_project=options.wandb_project)
            return train(task, data=data, config=train_config, options=options, run=run, backend=backend,
                         dist=dist, reporter=reporter, resume=resume, on_start=on_start, loggers=loggers)
    finally:
        run.unlock()


def _check_loggers(options: RunOptions) -> None:
    why = unavailable(options.log_to)
    if why is not None:
        raise TrainError(why)


def _make_task(kind: str, configs: dict[str, Any], train_config: TrainConfig, backend: Backend, dist: Dist,
               data: ImageData, val: ImageData | None, preview_images: int):
    diffusion = DiffusionConfig.from_dict(configs["diffusion"])
    if kind == "classifier":
        return ClassifierTask(ClassifierConfig.from_dict(configs["classifier"]), diffusion, train_config, backend, val=val, dist=dist)
    spec = ModelSpec(UNetConfig.from_dict(configs["unet"]), diffusion)
    return DiffusionTask(spec, train_config, backend, preview_images=preview_images, preview_data=data)


def _start_from(task, init: InitSource, reporter: Reporter) -> None:
    """Copy the --init weights into the task's fresh model, saying on stderr what changed."""
    fresh = transfer_weights(task.model, init)
    loaded = init.loaded
    origin = f"OpenAI file, preset {loaded.preset}" if loaded.source == "openai" else f"adm checkpoint, step {loaded.step}"
    reporter.info(f"starting from {loaded.path} ({origin}; sha256 {init.sha256[:12]}); fresh optimizer, EMA from these weights")
    for change in init.changes:
        reporter.info(f"--init: {change}")
    if fresh:
        reporter.info(f"--init: {len(fresh)} head tensor(s) freshly initialised ({', '.join(fresh)})")


def _summary(kind: str, run: RunDir, data: ImageData, task, config: TrainConfig, backend: Backend, dist: Dist) -> str:
    params = sum(p.numel() for p in task.model.parameters())
    per = config.batch_size // max(dist.world_size, 1)
    return (
        f"{kind} run {run.root}: {params / 1e6:.2f}M parameters, data {data.source}, "
        f"batch {config.batch_size} ({dist.world_size} process(es) x {per}"
        f"{f', microbatch {config.microbatch}' if config.microbatch else ''}), "
        f"{backend.device.type} {config.precision}"
        f"{_objective(task.diffusion, config) if kind != 'classifier' else ''}"
    )


def _objective(diffusion: DiffusionConfig, config: TrainConfig) -> str:
    """The diffusion objective in words, e.g. "; predicts v, hybrid loss, Min-SNR-γ 5"."""
    parts = [f"predicts {'ε' if diffusion.mean_type == 'epsilon' else diffusion.mean_type}", f"{config.loss} loss"]
    if config.min_snr_gamma is not None:
        parts.append(f"Min-SNR-γ {config.min_snr_gamma:g}")
    if config.p2_gamma > 0:
        parts.append(f"P2 γ {config.p2_gamma:g} k {config.p2_k:g}")
    if config.input_perturbation > 0:
        parts.append(f"input perturbation {config.input_perturbation:g}")
    return "; " + ", ".join(parts)
