"""Pin the raftkv code a benchmark run measures.

The repository's working tree is shared with people editing raftkv while a 25-minute run goes on;
without pinning, node processes started late in a run would load newer code than early ones. So
the run first copies `raftkv/` to a private directory and makes every process of the run (this one,
the spawned embedded nodes, the `python -m raftkv node` processes) import that copy: it is first on
`sys.path` and `PYTHONPATH`, and the working directory (which `python -m` puts first) is the copy's
parent. The run's table records the git commit and whether `raftkv/` had uncommitted changes.

This module imports nothing from raftkv.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "RAFTKV_BENCH_PINNED"


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _tree_digest(pkg: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def pin_raftkv(root: Path) -> dict[str, str]:
    """Copy root/raftkv once per run and import it from there; returns what was pinned."""
    pinned = os.environ.get(ENV)
    if pinned is None:  # the run's first process: make the copy
        parent = Path(tempfile.mkdtemp(prefix="raftkv-bench-code-"))
        shutil.copytree(root / "raftkv", parent / "raftkv", ignore=shutil.ignore_patterns("__pycache__"))
        pinned = str(parent)
        os.environ[ENV] = pinned
        rest = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = pinned + (os.pathsep + rest if rest else "")
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(pinned, ignore_errors=True))
    if sys.path[:1] != [pinned]:
        sys.path.insert(0, pinned)
    cwd = os.getcwd()
    os.chdir(pinned)
    dirty = _git(root, "status", "--porcelain", "--", "raftkv")
    return {
        "commit": _git(root, "rev-parse", "--short", "HEAD") or "?",
        "dirty_files": str(len(dirty.splitlines())) if dirty else "0",
        "digest": _tree_digest(Path(pinned) / "raftkv"),
        "cwd": cwd,  # where the command was started, for relative paths given on the command line
    }
