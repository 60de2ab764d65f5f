#!/usr/bin/env python
"""Whole-command sampling speed: `adm sample` against guided-diffusion's own
scripts/image_sample.py, start-up and checkpoint loading included, in one run; and the network's
GFLOP/s against the machine's own matrix-multiply speed, measured in the same run.

    python bench/bench_command.py --reference /path/to/guided-diffusion --work /tmp/bench-command \
        --batch 4 --steps 5 --reps 5 --json bench/results/command_cpu_imagenet64.json

The network is the published ImageNet 64x64 diffusion model's configuration (296M parameters),
built by the reference code with deterministic non-zero weights under the real names and saved
as a bare state dict, which both commands load as users load OpenAI's file. Modes:

    ref        python scripts/image_sample.py --model_path F <its README's flags for this model>
               --use_ddim True --timestep_respacing ddimSTEPS --num_samples B --batch_size B,
               float32 as its scripts run on a CPU. Its dist_util imports mpi4py and blobfile; the
               run puts a stub of each on PYTHONPATH (one process: rank 0 of 1; files opened with
               open()), so the script runs unchanged.
    adm        adm sample F --num B --batch-size B --ddim STEPS --out X.npz (the defaults:
               --precision auto, which is fp32 here unless the CPU has native bf16)
    adm-fp32 / adm-bf16   ... with --precision fp32 / bf16

Every mode runs once untimed (page cache, oneDNN kernel caches), then --reps rounds run every
mode once each, in turn, so machine noise hits all alike. Reported per mode: median, min and max
wall seconds of the whole command, the ratio ref median / mode median, and the peak resident
memory of the process (wait4's ru_maxrss).

The roofline part (in this process, --threads threads): the forward's FLOPs at batch B counted by
torch.utils.flop_counter, its median time in fp32 and bf16 (autocast, weights cast once, as adm
samples), and a square matrix multiply of --matmul-n in the same dtypes: the forward's GFLOP/s
as a share of the matmul's shows how far the network runs from the machine's own limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sample import CONFIGS, _loadavg, deterministic, import_reference  # noqa: E402

# guided-diffusion's README, "ImageNet 64x64" model flags (use_fp16 off: a CPU run).
REF_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
    "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--resblock_updown True --use_new_attention_order True --use_fp16 False --use_scale_shift_norm True"
).split()

MPI_STUB = '''\
"""Stand-in for mpi4py in a single-process benchmark run: rank 0 of 1."""
import types


class _Comm:
    rank, size = 0, 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def bcast(self, value, root=0):
        return value

    def barrier(self):
        return None


MPI = types.SimpleNamespace(COMM_WORLD=_Comm())
'''
BLOBFILE_STUB = '''\
"""Stand-in for blobfile on local paths."""
import os

BlobFile = open
join = os.path.join
basename = os.path.basename
exists = os.path.exists
isdir = os.path.isdir
listdir = os.listdir
'''


def write_stubs(root: Path) -> Path:
    (root / "mpi4py").mkdir(parents=True, exist_ok=True)
    (root / "mpi4py" / "__init__.py").write_text(MPI_STUB)
    (root / "blobfile.py").write_text(BLOBFILE_STUB)
    return root


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one command; exits with its stderr if it fails."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss // 1024


def commands(args, model: Path, work: Path) -> dict[str, list[str]]:
    adm = [sys.executable, "-m", "adm_cli", "sample", str(model), "--num", str(args.batch), "--batch-size",
           str(args.batch), "--ddim", str(args.steps), "--seed", "0", "--quiet", "--overwrite"]
    ref = [sys.executable, str(Path(args.reference) / "scripts" / "image_sample.py"), "--model_path", str(model),
           *REF_FLAGS, "--use_ddim", "True", "--timestep_respacing", f"ddim{args.steps}",
           "--num_samples", str(args.batch), "--batch_size", str(args.batch)]
    return {
        "ref": ref,
        "adm": adm + ["--out", str(work / "adm.npz")],
        "adm-fp32": adm + ["--precision", "fp32", "--out", str(work / "adm-fp32.npz")],
        "adm-bf16": adm + ["--precision", "bf16", "--out", str(work / "adm-bf16.npz")],
    }


def median_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def roofline(model_path: Path, batch: int, matmul_n: int, reps: int, precisions: tuple[str, ...]) -> dict:
    """The forward's GFLOP/s in each precision against a matmul's of the same dtype, same process."""
    from torch.utils.flop_counter import FlopCounterMode

    from adm_cli.backend import make_backend
    from adm_cli.checkpoint import load_model

    loaded = load_model(model_path)
    x = torch.randn(batch, 3, loaded.config.image_size, loaded.config.image_size)
    t = torch.full((batch,), 500)
    y = torch.arange(batch) % loaded.config.num_classes
    out = {}
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            loaded.model(x, t, y=y)
        flops = counter.get_total_flops()
        out["forward_gflop"] = flops / 1e9
        a = torch.randn(matmul_n, matmul_n)
        b = torch.randn(matmul_n, matmul_n)
        for precision in precisions:
            backend = make_backend("cpu", precision)
            model = backend.prepare(load_model(model_path).model)

            def forward():
                with backend.autocast():
                    model(x, t, y=y)

            ad, bd = (a, b) if precision == "fp32" else (a.bfloat16(), b.bfloat16())
            fwd = median_seconds(forward, reps)
            mm = median_seconds(lambda: ad @ bd, reps)
            out[precision] = {
                "forward_s": fwd,
                "forward_gflops": flops / fwd / 1e9,
                "matmul_gflops": 2 * matmul_n**3 / mm / 1e9,
                "share_of_matmul": (flops / fwd) / (2 * matmul_n**3 / mm),
            }
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="path of a guided-diffusion checkout (openai/guided-diffusion)")
    p.add_argument("--work", type=Path, required=True, help="where the 1.2 GB model file and the outputs go")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="DDIM steps")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--modes", default="ref,adm,adm-fp32,adm-bf16", help="adm-bf16 is slow where bf16 is emulated (AVX2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--no-roofline", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    model_path = args.work / "imagenet64_random.pt"
    if not model_path.exists():
        _, UNetModel, _, _ = import_reference(args.reference)
        tmp = model_path.with_suffix(".tmp")
        torch.save(deterministic(UNetModel(**CONFIGS["imagenet64"]["unet"])).state_dict(), tmp)
        os.replace(tmp, model_path)
    stubs = write_stubs(args.work / "stubs")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENAI_LOGDIR=str(args.work / "ref-out"),
               PYTHONPATH=os.pathsep.join([str(stubs), str(Path(args.reference).resolve()), str(REPO)]))
    env.pop("ADM_NATIVE_BF16", None)  # the machine's own default
    cmds = commands(args, model_path, args.work)
    modes = args.modes.split(",")

    times: dict[str, list[float]] = {m: [] for m in modes}
    rss: dict[str, int] = {}
    first: dict[str, float] = {}
    for m in modes:
        first[m], rss[m] = run_timed(cmds[m], env)
        print(f"warm-up {m}: {first[m]:.1f} s, {rss[m]} MiB", flush=True)
    for r in range(args.reps):
        for m in modes:
            seconds, peak = run_timed(cmds[m], env)
            times[m].append(seconds)
            rss[m] = max(rss[m], peak)
        print(f"round {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.1f} s" for m in modes), flush=True)

    from adm_cli.backend import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": args.threads, "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(cpu),
                    "auto_precision": resolve_precision("auto", cpu), "loadavg_after": _loadavg()},
        "settings": {"batch": args.batch, "ddim_steps": args.steps, "reps": args.reps},
        "commands": {m: " ".join(cmds[m]) for m in modes},
        "modes": {},
    }
    ref_med = statistics.median(times["ref"]) if "ref" in times else None
    for m in modes:
        med = statistics.median(times[m])
        result["modes"][m] = {"median_s": med, "min_s": min(times[m]), "max_s": max(times[m]), "times": times[m],
                              "ratio": ref_med / med if ref_med else None, "peak_rss_mib": rss[m]}
    if not args.no_roofline:
        # bf16 only where the CPU computes it: emulated on AVX2, one forward took minutes
        precisions = ("fp32", "bf16") if native_bf16(cpu) else ("fp32",)
        result["roofline"] = roofline(model_path, args.batch, args.matmul_n, reps=3, precisions=precisions)

    print(f"\n| mode | median s (min-max) | x guided-diffusion | peak RSS MiB |\n|---|---:|---:|---:|")
    for m, row in result["modes"].items():
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "—"
        print(f"| {m} | {row['median_s']:.1f} ({row['min_s']:.1f}-{row['max_s']:.1f}) | {ratio} | {row['peak_rss_mib']} |")
    if "roofline" in result:
        rf = result["roofline"]
        print(f"\nforward at batch {args.batch}: {rf['forward_gflop']:.1f} GFLOP")
        for precision in (p for p in ("fp32", "bf16") if p in rf):
            r = rf[precision]
            print(textwrap.dedent(f"""\
                {precision}: forward {r['forward_s']:.2f} s = {r['forward_gflops']:.1f} GFLOP/s; \
                matmul {args.matmul_n}^2 {r['matmul_gflops']:.1f} GFLOP/s; share {r['share_of_matmul']:.0%}"""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
