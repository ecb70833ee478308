"""The packages import from an installed (non-editable) copy, not only from
the source tree: packaging mistakes (a missing package, package data, an
entry point, a C header left out of the sdist) show up here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.utils import REPO


@pytest.mark.slow
def test_installed_copy_imports_every_package(tmp_path):
    # Installed from an sdist, as pip does from PyPI: the C extensions must build
    # from what the sdist ships (their headers are package data; a header left
    # out only shows as a missing optional extension, asserted below).
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], check=True, capture_output=True, cwd=REPO
    )
    (sdist,) = dist.glob("*.tar.gz")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(sdist)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    code = (
        "import importlib, pkgutil, contrib, tracer, agent_sim, sql_obfuscation\n"
        "for pkg in (tracer, contrib, agent_sim, sql_obfuscation):\n"
        f"    assert pkg.__file__.startswith({str(target)!r}), pkg.__file__\n"
        "import contrib.flask, tracer.run\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (target / "agent_sim" / "static" / "index.html").is_file(), "the web page must ship in the package"
    assert (target / "agent_sim" / "demo_shop" / "templates").is_dir(), "the demo's templates must ship too"
    entry_points = (next(target.glob("tracer_apm-*.dist-info")) / "entry_points.txt").read_text()
    assert "tracer-run = tracer.run:main" in entry_points and "agent-sim = agent_sim.cli:main" in entry_points
    for module in ("tracer/_cspan", "tracer/_cencode", "agent_sim/_cdecode"):
        assert list(target.glob(f"{module}.*.so")), f"{module} did not build from the sdist"
