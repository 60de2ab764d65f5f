"""The `adm` command: a thin Typer layer, one module per command."""

from __future__ import annotations

import typer

from adm_cli.version import __version__
from adm_cli.cli.demo import EXAMPLE as DEMO_EXAMPLE
from adm_cli.cli.demo import demo
from adm_cli.cli.evaluate import EVALUATE_EXAMPLE, REF_BATCH_EXAMPLE, evaluate, ref_batch
from adm_cli.cli.info import info
from adm_cli.cli.interpolate import EXAMPLE as INTERPOLATE_EXAMPLE
from adm_cli.cli.interpolate import interpolate
from adm_cli.cli.sample import EXAMPLE, sample
from adm_cli.cli.train import CLASSIFIER_EXAMPLE, DIFFUSION_EXAMPLE, train_classifier, train_diffusion
from adm_cli.cli.upsample import EXAMPLE as UPSAMPLE_EXAMPLE
from adm_cli.cli.upsample import upsample

app = typer.Typer(
    name="adm",
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
