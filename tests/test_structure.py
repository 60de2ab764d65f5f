"""The package's structure: a light package face and import graphs that read top-down."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import adm_cli

DATA = Path(adm_cli.__file__).parent / "data"


def test_importing_config_does_not_load_torch():
    # A fresh interpreter: this one has torch loaded already by other tests.
    code = "import adm_cli.config, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_package_face_resolves_public_api():
    from adm_cli.backend import make_backend
    from adm_cli.checkpoint import load_model
    from adm_cli.generate import SampleOptions, run_sampling, sample_images

    assert adm_cli.load_model is load_model
    assert adm_cli.make_backend is make_backend
    assert adm_cli.SampleOptions is SampleOptions
    assert adm_cli.run_sampling is run_sampling
    assert adm_cli.sample_images is sample_images
    assert isinstance(adm_cli.__version__, str)
    assert set(adm_cli.__all__) <= set(dir(adm_cli))
    for name in adm_cli.__all__:
        assert getattr(adm_cli, name) is not None


def test_package_face_unknown_name_is_attribute_error():
    try:
        adm_cli.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("adm_cli.no_such_name resolved")


def _data_imports(path: Path) -> set[str]:
    """Modules of ``adm_cli.data`` that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith("adm_cli.data."):
                found.add(node.module.split(".")[2])
            elif node.level == 0 and node.module == "adm_cli.data":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("adm_cli.data."):
                    found.add(alias.name.split(".")[2])
    return found


def test_data_package_has_no_import_cycle():
    modules = {p.stem for p in DATA.glob("*.py") if p.stem != "__init__"}
    graph = {m: _data_imports(DATA / f"{m}.py") & modules for m in modules}
    assert graph["datasets"] and graph["samples"]  # the walk does see imports

    # Depth-first search; a node met again while still on the path closes a cycle.
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle in adm_cli/data: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(modules):
        visit(module, [])


# ---- one rule for --precision auto (issue 14, item 1)


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True)])
def test_auto_precision_is_one_rule(monkeypatch, avx512_bf16, amx):
    """sample/upsample/interpolate (make_backend), training and the demo decide "auto" in one
    place: bf16 where the CPU computes it natively (AVX-512 BF16 or AMX, detected), else fp32."""
    import torch

    from adm_cli.backend import make_backend, native_bf16, resolve_precision
    from adm_cli.cli.train import _precision

    monkeypatch.delenv("ADM_NATIVE_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    auto = "bf16" if avx512_bf16 or amx else "fp32"
    assert native_bf16(cpu) == (avx512_bf16 or amx)
    assert resolve_precision("auto", cpu) == resolve_precision(None, cpu) == auto
    assert make_backend("cpu", "auto").precision == auto
    assert make_backend("cpu", "auto").cast_weights == (auto == "bf16")
    assert _precision(None, "cpu") == _precision("auto", "cpu") == auto
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    # the override the test suite pins (conftest) wins over the feature flags, both ways
    for forced, expect in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv("ADM_NATIVE_BF16", forced)
        assert resolve_precision("auto", cpu) == _precision(None, "cpu") == expect


def test_precision_refusals_are_one_rule():
    import torch

    from adm_cli.backend import BackendError, resolve_precision
    from adm_cli.cli.train import _precision

    for bad in (lambda: resolve_precision("fp16", torch.device("cpu")), lambda: _precision("fp16", "cpu")):
        with pytest.raises(BackendError, match="fp16 needs a GPU"):
            bad()
    with pytest.raises(BackendError, match="unknown precision 'fp8'"):
        _precision("fp8", "cpu")


def test_torchrun_keeps_every_backend_choice():
    """Under torchrun each process moves to its own GPU and keeps the rest (cast_weights too)."""
    import torch

    from adm_cli.backend import Backend, distributed_device

    class Dist:
        world_size, local_rank = 4, 3

    single = Backend(torch.device("cuda"), "bf16", channels_last=True, compile=True, cast_weights=True)
    moved = distributed_device(single, Dist())
    assert moved.device == torch.device("cuda", 3)
    assert (moved.precision, moved.channels_last, moved.compile, moved.cast_weights) == ("bf16", True, True, True)
    assert distributed_device(Backend(torch.device("cpu"), "fp32"), Dist()) == Backend(torch.device("cpu"), "fp32")


def test_compiled_artifacts_are_cached_where_runs_find_them_again(monkeypatch, tmp_path):
    """--compile keeps torch's compile cache under the user's cache folder (not torch's /tmp
    default), and a folder the user chose stays theirs."""
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from adm_cli.backend import make_backend

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    make_backend("cpu", "fp32")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # eager: nothing set
    make_backend("cpu", "fp32", compile=True)
    assert cache_dir() == str(tmp_path / "adm" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    make_backend("cpu", "fp32", compile=True)
    assert cache_dir() == str(tmp_path / "mine")
