"""A real full disk for tests: a small tmpfs in a private mount namespace (`unshare -rm`, user +
mount namespaces, or `unshare -m` as root), so nothing is left mounted and no root is needed
where user namespaces are enabled. Tests that need it skip, with the reason, where neither works."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_PROBE = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d; rmdir $d"


def _namespace() -> tuple[list[str] | None, str]:
    """(the unshare prefix that can mount a tmpfs, or None; why not)."""
    if shutil.which("unshare") is None:
        return None, "no unshare(1)"
    why = ""
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        try:
            probe = subprocess.run([*prefix, "sh", "-c", _PROBE], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
            continue
        if probe.returncode == 0:
            return prefix, ""
        why = probe.stderr.strip()[:200]
    return None, f"no user+mount namespace with tmpfs here: {why}"


PREFIX, _WHY = _namespace()
needs_tmpfs = pytest.mark.skipif(PREFIX is None, reason=f"a real full disk needs a private tmpfs ({_WHY})")


def in_small_disk(tmp_path: Path, script: str, size: str = "64k", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the shell `script` in a private mount namespace where `$D` (= tmp_path/"disk") is a
    fresh tmpfs of `size` (`mount -o remount,size=... "$D"` frees space); everything else of the
    file system is shared. Single-threaded torch, adm importable from this checkout."""
    assert PREFIX is not None
    disk = tmp_path / "disk"
    disk.mkdir()
    full = f'D={disk}; mount -t tmpfs -o size={size} tmpfs "$D" || exit 99\n' + script
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([*PREFIX, "sh", "-c", full], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert r.returncode != 99, r.stderr
    return r
