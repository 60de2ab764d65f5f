"""`adm plot` (issue 13): training curves as a PNG, from hand-made metrics.jsonl files and from one
tiny real run; the lenient reader; bad input as one `error:` line and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adm_cli.charts import PALETTE
from adm_cli.cli.app import app
from adm_cli.train.plot import COLUMNS, PANEL_SIZE, PlotError, moving_average, read_run, resolve_quantities
from tests.cli_helpers import DATA, TINY, adm, adm_fails

runner = CliRunner()


def make_run(root: Path, *, kind: str = "diffusion", lr: float = 1e-4, steps: int = 40, decay: float = 20.0, extra: str = "") -> Path:
    """A run directory with a run.json and a metrics.jsonl as training writes them."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"kind": kind}))
    lines = []
    for step in range(1, steps + 1):
        loss = 0.05 + math.exp(-step / decay)
        record = {"step": step, "loss": loss, "grad_norm": 1.0 + 0.1 * (step % 3), "lr": lr, "images_per_s": 100.0 + step}
        if kind == "diffusion":
            record.update({f"loss_q{q}": loss * (4 - q) for q in range(4)})
        else:
            record.update({"acc@1": min(1.0, step / steps), "val_acc@1": min(1.0, step / steps / 2)})
        lines.append(json.dumps(record))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra)
    return root


def shows(path: Path, colour: tuple[int, int, int]) -> bool:
    """Whether the image has a line's worth of pixels of `colour` (antialiasing shifts some)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - colour).max(axis=-1) <= 12).sum()) >= 50


def test_one_run_draws_every_default_panel(tmp_path):
    run = make_run(tmp_path / "a")
    out = tmp_path / "curves.png"
    stdout = adm("plot", run, "--out", out, "--quiet")
    assert stdout.strip() == str(out)
    image = Image.open(out)
    assert image.format == "PNG"
    # 8 panels (loss, 4 quartiles, grad norm, lr, img/s) in rows of COLUMNS
    assert image.width == COLUMNS * PANEL_SIZE[0]
    assert 3 * PANEL_SIZE[1] < image.height < 3 * PANEL_SIZE[1] + 100
    assert shows(out, PALETTE[0])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary name, which is gone


def test_two_runs_are_overlaid_and_differ_from_one(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", lr=3e-4, decay=5.0)
    one, two, other = tmp_path / "one.png", tmp_path / "two.png", tmp_path / "other.png"
    adm("plot", a, "--out", one, "--quiet")
    adm("plot", a, b, "--out", two, "--quiet")
    adm("plot", b, "--out", other, "--quiet")
    assert shows(two, PALETTE[0]) and shows(two, PALETTE[1])  # the legend's (and lines') colours
    assert not shows(one, PALETTE[1])
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in (one, other)]
    assert pixels[0].shape == pixels[1].shape and not np.array_equal(*pixels)  # other runs, other curves


def test_quantities_smoothing_and_overwrite(tmp_path):
    run = make_run(tmp_path / "a")
    out = tmp_path / "q.png"
    adm("plot", run, "--out", out, "--quantities", "loss,img/s", "--quiet")
    assert Image.open(out).size[0] == 2 * PANEL_SIZE[0]  # two panels in one row
    raw = out.read_bytes()
    assert "--overwrite" in adm_fails("plot", run, "--out", out, "--quantities", "loss,img/s", "--smooth", 5)
    assert out.read_bytes() == raw  # refused: unchanged
    adm("plot", run, "--out", out, "--quantities", "loss,img/s", "--smooth", 5, "--overwrite", "--quiet")
    assert out.read_bytes() != raw
    # a quantity no run logged: left out with a warning; only such quantities: refused
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "w.png"), "--quantities", "loss,vb"])
    assert result.exit_code == 0 and "no run logged vb; left out" in result.output
    assert "no run logged vb" in adm_fails("plot", run, "--out", tmp_path / "x.png", "--quantities", "vb")


def test_classifier_runs_plot_their_accuracy(tmp_path):
    run = make_run(tmp_path / "clf", kind="classifier")
    metrics = read_run(run)
    assert resolve_quantities([metrics], None) == ["loss", "acc@1", "val_acc@1", "grad_norm", "lr", "images_per_s"]
    adm("plot", run, "--out", tmp_path / "c.png", "--quiet")
    assert Image.open(tmp_path / "c.png").size == (3 * PANEL_SIZE[0], Image.open(tmp_path / "c.png").size[1])


def test_reader_skips_a_cut_last_line_silently_and_warns_once_for_others(tmp_path):
    warnings: list[str] = []
    cut = make_run(tmp_path / "cut", extra='{"step": 41, "lo')
    assert [r["step"] for r in read_run(cut, warn=warnings.append).records] == list(range(1, 41))
    assert warnings == []
    bad = make_run(tmp_path / "bad")
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    lines[3], lines[7] = "garbage", '{"no_step": 1}'
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert len(read_run(bad, warn=warnings.append).records) == 38
    assert len(warnings) == 1 and "skipped 2 unreadable line(s) (line 4, 8)" in warnings[0]
    # a step logged twice (a run resumed from an earlier checkpoint): the later line holds
    resumed = make_run(tmp_path / "resumed", extra=json.dumps({"step": 5, "loss": 9.0}) + "\n")
    assert [r["loss"] for r in read_run(resumed).records if r["step"] == 5] == [9.0]


def test_moving_average():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    np.testing.assert_allclose(moving_average([1, 2, 3], 10), [1, 1.5, 2])


def test_bad_input_is_one_error_line(tmp_path):
    good = make_run(tmp_path / "good")
    (tmp_path / "folder").mkdir()
    assert "not a run directory" in adm_fails("plot", tmp_path / "folder", "--out", tmp_path / "o.png")
    assert "not a run directory" in adm_fails("plot", tmp_path / "missing", "--out", tmp_path / "o.png")
    started = tmp_path / "started"
    started.mkdir()
    (started / "run.json").write_text("{}")
    assert "no metrics yet" in adm_fails("plot", started, "--out", tmp_path / "o.png")
    (started / "metrics.jsonl").write_text("")
    assert "holds no metrics yet" in adm_fails("plot", good, started, "--out", tmp_path / "o.png")
    assert "does not exist" in adm_fails("plot", good, "--out", tmp_path / "nowhere" / "o.png")
    assert ".png" in adm_fails("plot", good, "--out", tmp_path / "o.jpg")
    assert "--smooth" in adm_fails("plot", good, "--out", tmp_path / "o.png", "--smooth", 0)
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(PlotError):
        read_run(tmp_path / "folder")


def test_a_real_tiny_run(tmp_path):
    run = tmp_path / "tiny"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 3)
    out = tmp_path / "real.png"
    adm("plot", run, "--out", out, "--quiet")
    assert Image.open(out).width == COLUMNS * PANEL_SIZE[0]
    # every default the run logged is drawn (a quartile appears once some t fell in it)
    assert {"loss", "grad_norm", "lr", "images_per_s"} <= set(resolve_quantities([read_run(run)], None))


def test_help_shows_the_example():
    result = runner.invoke(app, ["plot", "--help"])
    assert result.exit_code == 0
    assert "adm plot runs/faces --out curves.png" in result.output
