"""Running `adm` commands in-process for the tests: success, and the one-line `error:` + exit 2
contract of bad input. TINY/DATA: the smallest training run on the built-in shapes."""

from __future__ import annotations

from typer.testing import CliRunner

from adm_cli.cli.app import app

runner = CliRunner()

TINY = [
    "--preset", "tiny", "--image-size", "8", "--model-channels", "32", "--diffusion-steps", "50",
    "--batch-size", "4", "--log-every", "1", "--quiet",
]
DATA = "synthetic:64"


def invoke(*args):
    """The CliRunner result of `adm ARGS` (arguments turned into strings)."""
    return runner.invoke(app, [str(a) for a in args])


def stderr_of(result) -> str:
    return getattr(result, "stderr", None) or result.output


def adm_result(*args):
    """`adm ARGS`, asserted to succeed; the whole result (stdout and stderr apart)."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def adm(*args) -> str:
    """`adm ARGS`, asserted to succeed; its output."""
    return adm_result(*args).output


def adm_fails(*args) -> str:
    """`adm ARGS`, asserted to be refused as bad input: exit 2 and one `error:` line; that line."""
    result = invoke(*args)
    out = stderr_of(result)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert out.startswith("error: ") and out.count("\n") == 1, out
    return out
