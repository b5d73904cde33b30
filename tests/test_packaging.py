"""The Dockerfile and docker-compose.yml mirror the seed's layout. No Docker engine runs on these
machines, so this validates the compose file with `docker-compose config` (Debian's package,
installed by ./dev test) and checks what it describes; the image itself is not built here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose_config() -> str:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing in CI; ./dev test should have installed it")
        pytest.skip("docker-compose is not installed (./dev test installs it)")
    out = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_compose_file_is_valid_and_mirrors_the_seed_layout() -> None:
    import json

    text = compose_config()
    try:
        import yaml  # docker-compose itself depends on PyYAML, but our venv may not have it
    except ImportError:
        yaml = None
    if yaml is not None:
        services = yaml.safe_load(text)["services"]
        published = {
            name: [
                str(p.get("published", p)) if isinstance(p, dict) else str(p).split(":")[0]
                for p in svc.get("ports", [])
            ]
            for name, svc in services.items()
        }
        assert published == {"node1": ["3000"], "node2": ["3001"], "node3": ["3002"], "dashboard": ["8080"]}, (
            json.dumps(published)
        )
    for name in ("node1", "node2", "node3", "dashboard"):
        assert f"{name}:" in text
    for port in ("3000", "3001", "3002", "8080"):
        assert port in text


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'ENTRYPOINT ["raftkv"]' in text
