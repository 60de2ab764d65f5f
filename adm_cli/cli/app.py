"""The `adm` command: a thin Typer layer, one module per command."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer on click
    import click  # type: ignore[no-redef]

from adm_cli.version import __version__
from adm_cli.cli.demo import EXAMPLE as DEMO_EXAMPLE
from adm_cli.cli.demo import demo
from adm_cli.cli.evaluate import EVALUATE_EXAMPLE, REF_BATCH_EXAMPLE, evaluate, ref_batch
from adm_cli.cli.info import info
from adm_cli.cli.interpolate import EXAMPLE as INTERPOLATE_EXAMPLE
from adm_cli.cli.interpolate import interpolate
from adm_cli.cli.plot import EXAMPLE as PLOT_EXAMPLE
from adm_cli.cli.plot import plot
from adm_cli.cli.sample import EXAMPLE, sample
from adm_cli.cli.train import CLASSIFIER_EXAMPLE, DIFFUSION_EXAMPLE, train_classifier, train_diffusion
from adm_cli.cli.upsample import EXAMPLE as UPSAMPLE_EXAMPLE
from adm_cli.cli.upsample import upsample

def usage_error_line(e: "click.exceptions.UsageError") -> str:
    """A click usage error as one `error: ...` line (no box, no usage block)."""
    message = " ".join(e.format_message().split())
    message = message.replace("Value error, ", "").rstrip(".")  # "Value error, ": typer's wrapper around a ValueError
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None and ctx.command_path else "adm"
    return f"error: {message} (see {where} --help)"


class AdmGroup(TyperGroup):
    """The command group, with usage errors (bad choice, missing argument, unknown option, a value an option
    refuses) as one `error:` line and exit 2 instead of Typer's boxed message; `--help` is unchanged."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `adm`: the help, as before
            typer.echo(e.ctx.get_help())
            sys.exit(2)
        except click.exceptions.UsageError as e:
            sys.stderr.write(usage_error_line(e) + "\n")
            sys.exit(2)
        except click.exceptions.ClickException as e:
            sys.stderr.write(f"error: {' '.join(e.format_message().split())}\n")
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.stderr.write("aborted\n")
            sys.exit(1)
        # without standalone mode, an Exit(code) comes back as its code and a finished command as its value
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="adm",
    cls=AdmGroup,
    help="Diffusion Models Beat GANs (ADM), as a tool suite: train, sample, guide, upsample, interpolate, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """adm: the system of Dhariwal & Nichol (2021)."""


app.command("sample", epilog=EXAMPLE)(sample)
app.command("info")(info)
app.command("demo", epilog=DEMO_EXAMPLE)(demo)
app.command("train-diffusion", epilog=DIFFUSION_EXAMPLE)(train_diffusion)
app.command("train-classifier", epilog=CLASSIFIER_EXAMPLE)(train_classifier)
app.command("evaluate", epilog=EVALUATE_EXAMPLE)(evaluate)
app.command("ref-batch", epilog=REF_BATCH_EXAMPLE)(ref_batch)
app.command("upsample", epilog=UPSAMPLE_EXAMPLE)(upsample)
app.command("interpolate", epilog=INTERPOLATE_EXAMPLE)(interpolate)
app.command("plot", epilog=PLOT_EXAMPLE)(plot)
