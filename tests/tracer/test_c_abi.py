"""A C module built from other sources than the Python files that load it
(a checkout updated without rebuilding) is refused with one warning that
says how to rebuild, and the pure-Python code runs: its old ``.so`` would
lack what the new Python calls (a Flask hook traced through a missing
``_cspan.TracedCall`` lost its span; the writer's batch through a missing
``_cencode.pairs`` lost the batch)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import REPO, assert_clean_output
from tracer import encoding, span

DIGEST_FILE = Path(REPO, "tests", "tracer", "c_abi_digest.txt")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(REPO, "tracer").glob("_c*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


def test_the_abi_is_bumped_with_the_c_sources() -> None:
    # Any edit to tracer/_c*.[ch] fails this until the digest is updated:
    # the moment to bump the ABI if the modules' Python-visible interface changed.
    header = Path(REPO, "tracer", "_cmodule.h").read_text()
    c_abi = int(re.search(r"#define TRACER_C_ABI (\d+)", header).group(1))  # type: ignore[union-attr]
    assert c_abi == span._C_ABI, "TRACER_C_ABI (tracer/_cmodule.h) and _C_ABI (tracer/span.py) differ"
    recorded_abi, recorded_digest = DIGEST_FILE.read_text().split()
    now = _sources_digest()
    assert (int(recorded_abi), recorded_digest) == (c_abi, now), (
        "tracer's C sources changed: if a module's Python-visible interface changed (a function, type, argument or"
        " result), bump TRACER_C_ABI in tracer/_cmodule.h and _C_ABI in tracer/span.py; then write"
        f" '{c_abi} {now}' (with the new ABI) into {DIGEST_FILE}"
    )


@pytest.mark.skipif(span._cspan is None or encoding._cencode is None, reason="the C modules are not in use")
def test_the_built_modules_match() -> None:
    assert span._cspan.ABI == encoding._cencode.ABI == span._C_ABI
    assert span.stale_builds == {}


@pytest.mark.skipif(span._cspan is None or encoding._cencode is None, reason="the C modules are not built")
def test_a_stale_build_is_refused_with_the_fix(tmp_path: Path) -> None:
    # The built modules next to Python files that expect another ABI.
    shutil.copytree(os.path.join(REPO, "tracer"), tmp_path / "tracer", ignore=shutil.ignore_patterns("__pycache__"))
    span_py = tmp_path / "tracer" / "span.py"
    text = span_py.read_text()
    assert f"_C_ABI = {span._C_ABI}\n" in text
    span_py.write_text(text.replace(f"_C_ABI = {span._C_ABI}\n", f"_C_ABI = {span._C_ABI + 1}\n"))
    code = (
        "import tracer, tracer.processor\n"
        "from tracer import encoding, run, span\n"
        "print(span._cspan, encoding._cencode, tracer.processor._cencode)\n"
        "print(run.span_code())\n"
        "print(run.encoder_code())\n"
        "with tracer.tracer.trace('works') as s:\n"
        "    pass\n"
        f"print(s.duration_ns is not None, span.__file__.startswith({str(tmp_path)!r}))\n"
    )
    # From tmp_path (python -c puts the working directory first on sys.path).
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert_clean_output(proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines[0] == "None None None" and lines[-1] == "True True"
    for name, line in (("_cspan", lines[1]), ("_cencode", lines[2])):
        assert line.startswith(f"pure Python: tracer.{name} was built from other sources") and "pip install -e ." in line
    warnings = [line for line in proc.stderr.splitlines() if "was built from other sources" in line]
    assert len(warnings) == 2, proc.stderr  # once per module (_cencode is loaded twice)
    assert f"(ABI {span._C_ABI}, these files need {span._C_ABI + 1})" in warnings[0]
