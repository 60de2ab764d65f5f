"""Commands of the design card that later work builds; each says so and exits 2."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from adm_cli.cli.errors import fail

ISSUE = {
    "upsample": "super-resolution sampling (adm upsample)",
    "interpolate": "DDIM interpolation (adm interpolate)",
}


def pending(name: str):
    def command(
        args: Annotated[Optional[List[str]], typer.Argument(help="not built yet")] = None,
    ) -> None:
        fail(f"`adm {name}` is not built yet in this version: {ISSUE[name]} is planned (see CHANGELOG.md)")

    command.__doc__ = f"[not built yet] {ISSUE[name]}."
    return command
