"""`--resume` with run-defining options: a value equal to the run's is accepted, one that differs
is refused before anything in the run is written or locked.

The check rebuilds the configs from this command line exactly as a new run would (the command's
own `make_configs`, fed the run's data as run.json records it) and compares them with run.json,
field by field, at the fields each option given on the command line sets. An option's field has
the option's name (`--lr` -> config.train.lr, `--labels` -> data.labels, `--val-fraction` ->
val_fraction) unless `FIELDS` says otherwise, so a new option is covered without a new rule. An
option no config records (--preset: presets are not stored, what they set is) is compared with
the run's command line in run.json; a flag that neither records is refused.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import typer

from adm_cli.cli.errors import UserError
from adm_cli.train.run_dir import RunDir

__all__ = ["FIELDS", "check_resume_options"]

# Options whose field in run.json has another name than the option.
FIELDS: dict[str, tuple[str, ...]] = {
    "scale_shift_norm": ("config.unet.use_scale_shift_norm",),
    "diffusion_steps": ("config.diffusion.steps",),
    "predict_x0": ("config.diffusion.mean_type",),
    "ema": ("config.train.ema_rates",),
    "class_cond": ("config.unet.num_classes",),
    "clean": ("config.train.noised",),
}


@dataclass(frozen=True)
class RecordedData:
    """The run's data as run.json records it: what the configs are built from, without opening it."""

    image_size: int
    channels: int
    num_classes: int | None


def _plain(value: Any) -> Any:
    """The JSON form run.json stores (tuples as lists, enums and paths as strings)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return json.loads(json.dumps(value))


def _get(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for key in path.split("."):
        node = node[key]
    return node


def _has(document: dict[str, Any], path: str) -> bool:
    try:
        _get(document, path)
    except (KeyError, TypeError):
        return False
    return True


def _paths(name: str, stored: dict[str, Any]) -> list[str]:
    """Where option `name` lands in run.json: `FIELDS`, else a field of that name in a config, in
    the data or at the top level."""
    if name in FIELDS:
        return [p for p in FIELDS[name] if _has(stored, p)]
    configs = stored.get("config") or {}
    candidates = [f"config.{part}.{name}" for part in configs if isinstance(configs[part], dict)]
    candidates += [f"config.{name}", f"data.{name}", name]
    return [p for p in candidates if _has(stored, p)]


_MISSING = object()


def _recorded_value(ctx: typer.Context, name: str, stored: dict[str, Any]) -> Any:
    """An option no config records (e.g. --preset), as the run's command line in run.json gave it:
    its value there, else its default; _MISSING for a flag (the command line omits a flag's off
    value, so it cannot tell) or a run.json without the command."""
    import shlex

    param = _option(ctx, name)
    if param.is_flag or not isinstance(stored.get("command"), str):
        return _MISSING
    try:
        words = shlex.split(stored["command"])
    except ValueError:
        return _MISSING
    value = param.default
    for word, following in zip(words, words[1:]):
        if word in param.opts:
            value = following
    return _plain(value)


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """(path, a's value, b's value) at the first leaf where a and b differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _option(ctx: typer.Context, name: str) -> Any:
    return next(p for p in ctx.command.params if p.name == name)


def _given(ctx: typer.Context, name: str) -> str:
    """The option as the command line gave it: `--lr 0.0002`, `--no-flip`, `--preset small`."""
    param, value = _option(ctx, name), ctx.params[name]
    if isinstance(value, bool):
        return param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0]
    return f"{param.opts[0]} {_text(_plain(value))}"


def _stored_text(ctx: typer.Context, name: str, path: str, rebuilt: Any, stored: Any) -> str:
    """The run's value in the option's terms where it has them (`0.0001`, `--flip`), else with its field."""
    param, value = _option(ctx, name), ctx.params[name]
    if isinstance(value, bool) and isinstance(stored, bool) and rebuilt == value and param.secondary_opts:
        return param.opts[0] if stored else param.secondary_opts[0]  # a flag that sets its field as is
    if path.rsplit(".", 1)[-1] == name and not isinstance(stored, bool):
        return _text(stored)
    return f"{path.removeprefix('config.')} {_text(stored)}"


def check_resume_options(
    ctx: typer.Context,
    *,
    out: Path,
    kind: str,
    make_configs: Callable[[Any], dict[str, Any]],
    resumable: Collection[str],
) -> None:
    """Refuse the run-defining options on this command line whose values differ from the run's,
    all named in one line; equal ones pass. `make_configs(data)`: the configs a new run with this
    command line would store. `resumable`: the options a resume may change (not checked)."""

    def on_command_line(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    given = [name for name in ctx.params if name not in resumable and on_command_line(name)]
    if not given:
        return
    stored = RunDir(out).read_description()
    if stored.get("kind") != kind:
        return  # run_training names the run's kind
    recorded = stored.get("data") or {}
    data = RecordedData(
        image_size=ctx.params.get("image_size") or recorded.get("image_size"),
        channels=ctx.params.get("channels") or recorded.get("channels"),
        num_classes=recorded.get("num_classes"),
    )
    configs = _plain(make_configs(data))  # what a new run with this command line would store

    paths = {name: _paths(name, stored) for name in given}
    recorded_values = {name: _recorded_value(ctx, name, stored) for name, where in paths.items() if not where}
    unknown = [f"--{name.replace('_', '-')}" for name, value in recorded_values.items() if value is _MISSING]
    if unknown:
        raise UserError(
            f"{', '.join(unknown)} cannot be given with --resume (run.json does not record it); "
            "drop it, or start a new run"
        )

    differing = []
    for name in given:
        if name in recorded_values:  # compared as text: the stored command line is text
            if _text(_plain(ctx.params[name])) != _text(recorded_values[name]):
                differing.append(f"{_given(ctx, name)} differs from the run's {_text(recorded_values[name])}")
            continue
        for path in paths[name]:
            # a config field as the rebuilt configs have it; a data or top-level field is the option's value
            new = _get(configs, path.removeprefix("config.")) if path.startswith("config.") else _plain(ctx.params[name])
            found = _first_difference(new, _get(stored, path), path)
            if found is not None:
                where, new_value, old_value = found
                differing.append(f"{_given(ctx, name)} differs from the run's {_stored_text(ctx, name, where, new_value, old_value)}")
                break
    if differing:
        them = "them" if len(differing) > 1 else "it"
        raise UserError(f"{', '.join(differing)} (run.json); start a new run to change {them}")
