"""--log-to tensorboard / wandb: each metrics.jsonl record's scalars at its step, preview grids as
images, run.json once, the choice kept on resume; a missing package or an unknown name refused
before a run directory exists; a logger failing mid-run dropped with one warning."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.cli_helpers import DATA, adm_fails
from tests.cli_helpers import adm_result as adm
from PIL import Image


TINY = [
    "--preset", "tiny", "--image-size", "8", "--model-channels", "32", "--diffusion-steps", "10",  # T 10: quick previews
    "--batch-size", "4", "--quiet",
]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stored_log_to(run: Path) -> list[str]:
    return json.loads((run / "run.json").read_text())["options"]["log_to"]


# ---------------------------------------------------------------------------------- TensorBoard


def tensorboard_events(run: Path):
    pytest.importorskip("tensorboard", reason="--log-to tensorboard needs the tensorboard package (adm[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_gets_each_record_the_previews_and_run_json(tmp_path):
    pytest.importorskip("tensorboard", reason="--log-to tensorboard needs the tensorboard package (adm[tensorboard])")
    run = tmp_path / "run"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 4, "--log-every", 2, "--preview-every", 2,
        "--preview-images", 4, "--log-to", "tensorboard")
    events = tensorboard_events(run)
    records = metrics(run)
    assert [r["step"] for r in records] == [2, 4]
    assert set(events.Tags()["scalars"]) == set().union(*records) - {"step"}  # the same keys
    for key in set(events.Tags()["scalars"]):
        logged = {e.step: e.value for e in events.Scalars(key)}
        expected = {r["step"]: r[key] for r in records if key in r}
        assert logged.keys() == expected.keys(), key
        for step, value in expected.items():  # event files hold float32
            assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-30), (key, step)
    images = events.Images("preview")
    assert [e.step for e in images] == [2, 4]
    png = Image.open(run / "previews" / "step-00000004.png")
    assert (images[-1].width, images[-1].height) == png.size
    text = events.Tensors("run.json/text_summary")[0].tensor_proto.string_val[0].decode()
    shown = json.loads(text.strip().removeprefix("```json").removesuffix("```"))
    assert shown == json.loads((run / "run.json").read_text())


def test_tensorboard_choice_is_kept_on_resume_and_a_rerun_step_is_logged_once(tmp_path):
    pytest.importorskip("tensorboard", reason="--log-to tensorboard needs the tensorboard package (adm[tensorboard])")
    run = tmp_path / "run"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 4, "--log-every", 1, "--save-every", 2,
        "--log-to", "tensorboard")
    (run / "checkpoints" / "step-00000004.pt").unlink()  # as if killed after logging step 4, before saving it
    adm("train-diffusion", "--out", run, "--resume", "--steps", 5, "--quiet")  # no --log-to: the stored one
    assert stored_log_to(run) == ["tensorboard"]
    losses = {e.step: e.value for e in tensorboard_events(run).Scalars("loss")}
    steps = [e.step for e in tensorboard_events(run).Scalars("loss")]
    assert steps == [1, 2, 3, 4, 5]  # steps 3 and 4 of the first invocation purged, logged again
    assert losses == pytest.approx({r["step"]: r["loss"] for r in metrics(run)}, rel=1e-6)

    adm("train-diffusion", "--out", run, "--resume", "--steps", 6, "--quiet", "--log-to", "none")
    assert stored_log_to(run) == []
    assert [e.step for e in tensorboard_events(run).Scalars("loss")][-1] == 5


def test_a_logger_failing_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="--log-to tensorboard needs the tensorboard package (adm[tensorboard])")
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    run = tmp_path / "run"
    result = adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 3, "--log-every", 1, "--log-to", "tensorboard")
    err = getattr(result, "stderr", None) or result.output
    assert err.count("warning: tensorboard logging failed") == 1, err
    assert "No space left on device" in err
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "step-00000003.pt").is_file()


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", ["train-diffusion", "train-classifier"])
@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_a_missing_logger_package_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, command, logger):
    from adm_cli.train import loggers

    real = loggers.find_spec
    monkeypatch.setattr(loggers, "find_spec", lambda name, *a: None if name == logger else real(name, *a))
    err = adm_fails(command, DATA, "--out", tmp_path / "run", "--steps", 1, "--log-to", "tensorboard,wandb")
    assert f"--log-to {logger} needs the {logger} package" in err and f"adm[{logger}]" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train-diffusion", "train-classifier"])
def test_an_unknown_logger_is_one_line_and_leaves_no_run(tmp_path, command):
    err = adm_fails(command, DATA, "--out", tmp_path / "run", "--steps", 1, "--log-to", "tensorboard,mlflow")
    assert "unknown logger 'mlflow'" in err and "tensorboard, wandb" in err
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_whose_logger_is_gone_is_refused(tmp_path, monkeypatch):
    from adm_cli.train import loggers

    run = tmp_path / "run"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 1)
    description = json.loads((run / "run.json").read_text())
    description["options"]["log_to"] = ["wandb"]  # as stored by a machine that had wandb
    (run / "run.json").write_text(json.dumps(description))
    monkeypatch.setattr(loggers, "find_spec", lambda name, *a: None)
    err = adm_fails("train-diffusion", "--out", run, "--resume", "--steps", 2, "--quiet")
    assert "--log-to wandb needs the wandb package" in err
    ok = adm("train-diffusion", "--out", run, "--resume", "--steps", 2, "--quiet", "--log-to", "none")
    assert ok.stdout.strip().endswith("step-00000002.pt")


# ---------------------------------------------------------------------------------- W&B (offline)


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: a 7-byte file
    header, then 32 KiB blocks of chunks with a 7-byte header: CRC32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            break
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(folder: Path) -> dict:
    """run id and project, config (JSON values) and history rows ({key: JSON value}) of one offline
    run, once its file is complete (W&B's service writes it after `finish` returns)."""
    path = next(folder.glob("run-*.wandb"))
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):
        assert time.monotonic() < deadline, f"{path} has no exit record"
        time.sleep(0.1)
    out: dict = {"history": [], "config": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["project"] = record.run.run_id, record.run.project
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
    return out


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="--log-to wandb needs the wandb package (adm[wandb])")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    # Not what this test is about, and seconds on a busy CPU: system metrics, host metadata, pip list.
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_META", "true")
    monkeypatch.setenv("WANDB_X_SAVE_REQUIREMENTS", "false")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)


def wandb_train(run: Path, *extra) -> str:
    """A 4-step run logging to W&B (offline); returns the W&B run id."""
    first = adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 4, "--log-every", 2, "--log-to", "wandb", *extra)
    assert first.stdout == f"{run / 'checkpoints' / 'step-00000004.pt'}\n"  # wandb kept off stdout
    return (run / "wandb" / "adm-run-id").read_text().strip()


def test_wandb_offline_run_gets_each_record_and_run_json(tmp_path, wandb_offline):
    run = tmp_path / "run"
    run_id = wandb_train(run, "--wandb-project", "adm-test")
    (folder,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    logged = wandb_run(folder)
    assert logged["id"] == run_id and logged["project"] == "adm-test"
    description = json.loads((run / "run.json").read_text())
    assert {k: logged["config"][k] for k in description} == description
    rows = {row["_step"]: row for row in logged["history"]}
    records = metrics(run)
    assert sorted(rows) == [r["step"] for r in records] == [2, 4]
    for record in records:  # the same keys and values (JSON round trip: exact)
        row = rows[record["step"]]
        assert {k: row[k] for k in row if not k.startswith("_")} == {k: v for k, v in record.items() if k != "step"}


@pytest.mark.slow
def test_wandb_previews_and_resume_continues_the_same_run(tmp_path, wandb_offline, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("WANDB_PROJECT", "adm-env")  # the project when --wandb-project is not given
    run_id = wandb_train(run, "--preview-every", 4, "--preview-images", 4)
    (folder,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    rows = {row["_step"]: row for row in wandb_run(folder)["history"]}
    assert "preview/_type" not in rows[2]
    assert rows[4]["preview/_type"] == "image-file" and (folder / "files" / rows[4]["preview/path"]).is_file()
    png = Image.open(run / "previews" / "step-00000004.png")
    assert (rows[4]["preview/width"], rows[4]["preview/height"]) == png.size

    monkeypatch.setenv("WANDB_PROJECT", "another")  # a resume keeps the run's project (and preview cadence)
    time.sleep(1.1)  # W&B names offline folders by the second: two inits in one second would share one
    adm("train-diffusion", "--out", run, "--resume", "--steps", 6, "--quiet")
    assert (run / "wandb" / "adm-run-id").read_text().strip() == run_id
    folders = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2
    resumed = wandb_run(folders[-1])
    assert resumed["id"] == run_id and resumed["project"] == "adm-env"
    assert [row["_step"] for row in resumed["history"]] == [6]
    assert resumed["history"][0]["loss"] == metrics(run)[-1]["loss"]
