"""`bench/run.py --smoke` runs end to end (raftkv plus whichever peers are installed) in well under
a minute, writes its table and PNG, and the table has every section, so the benchmark cannot rot."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 60, f"smoke mode took {elapsed:.0f} s"
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## HTTP", "## Embedded", "## Failover", "## Restart and memory", "## Durability", "## Targets"):
        assert heading in text, f"{heading!r} missing from:\n{text}"
    assert "| write c=1 v=10B spread |" in text
    assert "| raftkv |" in text  # a failover row
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert "# raftkv benchmark results" in proc.stdout
