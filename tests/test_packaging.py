"""The Dockerfile and docker-compose.yml mirror the seed's layout. No Docker engine runs on these
machines, so this validates the compose file with `docker-compose config` (Debian's package,
installed by ./dev test) and checks what it describes; the image itself is not built here.
`./dev` is checked with stand-ins for the virtualenv's programs, so no package is installed."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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


def compose_services() -> dict:
    return yaml.safe_load(compose_config())["services"]


def test_compose_file_is_valid_and_mirrors_the_seed_layout() -> None:
    published = {
        name: [
            str(p.get("published", p)) if isinstance(p, dict) else str(p).split(":")[0]
            for p in svc.get("ports", [])
        ]
        for name, svc in compose_services().items()
    }
    assert published == {"node1": ["3000"], "node2": ["3001"], "node3": ["3002"], "dashboard": ["8080"]}, published


def test_compose_builds_one_image_and_every_service_reuses_it() -> None:
    services = compose_services()
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["node1"], builders
    assert {svc["image"] for svc in services.values()} == {"distributed-kv-store"}
    for name, svc in services.items():
        if name != "node1":  # never pulled from a registry, and started (so built) after node1
            assert svc["pull_policy"] == "never" and "node1" in svc["depends_on"], (name, svc)


def test_compose_project_is_named_so_the_seeds_container_names_work() -> None:
    """docker logs -f distributed-kv-store-node1-1: Compose v2 names containers
    <project>-<service>-<n>; the project name comes from .env, which v1 and v2 both read."""
    env = dict(
        line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert env == {"COMPOSE_PROJECT_NAME": "distributed-kv-store"}
    assert "name" not in yaml.safe_load((ROOT / "docker-compose.yml").read_text()), "Compose v1 rejects `name:`"


def docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: a pattern matches the path or a
    folder it is in, `**/` also matching no folder (Docker's rules, near enough: fnmatch's `*` also
    crosses `/`, and the file has no `!` exceptions)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, p) or fnmatch.fnmatch(prefix, p.removeprefix("**/"))
               for p in patterns for prefix in prefixes)


def test_the_build_context_leaves_out_the_virtualenv_and_data_but_has_what_the_image_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for path in (".venv/bin/python", "data/node1/node.log", "raftkv/__pycache__/cli.cpython-311.pyc"):
        assert docker_ignores(path, patterns), path
    for path in ("pyproject.toml", "README.md", "raftkv/cli.py", "raftkv/dashboard/static/index.html",
                 "deploy/kubernetes/raftkv_pod.py"):
        assert not docker_ignores(path, patterns), f"the Dockerfile copies {path}"


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'ENTRYPOINT ["raftkv"]' in text


def fake_venv(checkout: Path) -> Path:
    """A copy of ./dev and pyproject.toml whose virtualenv programs only log how they were called."""
    shutil.copy(ROOT / "dev", checkout)
    shutil.copy(ROOT / "pyproject.toml", checkout)
    calls = checkout / "calls"
    venv_bin = checkout / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for program in ("python", "pip", "raftkv"):
        (venv_bin / program).write_text(f'#!/bin/sh\necho "{program} $*" >> "{calls}"\n')
        (venv_bin / program).chmod(0o755)
    return calls


def test_dev_up_installs_only_what_running_needs_and_only_once(tmp_path: Path) -> None:
    calls = fake_venv(tmp_path)

    def dev(*args: str) -> list[str]:
        calls.unlink(missing_ok=True)
        subprocess.run([str(tmp_path / "dev"), *args], check=True, timeout=60, capture_output=True)
        return calls.read_text().splitlines()

    assert dev("up", "--nodes", "1") == [
        "pip install -q --upgrade pip", "pip install -q -e .", "raftkv up --nodes 1"
    ]
    assert dev("up") == ["raftkv up"], "installed once"
    assert dev("sim", "--seeds", "1") == ["python -m raftkv.sim --seeds 1"], "the simulator needs no extras either"
