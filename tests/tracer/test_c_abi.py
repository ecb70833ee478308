"""A C module (tracer's, agent_sim's) built from other sources than the Python files that load it
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
from typing import Any

import pytest

import agent_sim
from tests.utils import REPO, assert_clean_output
from tracer import encoding, span

try:
    from agent_sim import _cdecode
except ImportError:
    _cdecode = None

DIGEST_FILE = Path(REPO, "tests", "tracer", "c_abi_digest.txt")


def _sources_digest(package: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(REPO, package).glob("_c*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("package", "header", "define", "python_abi"),
    [
        ("tracer", "_cmodule.h", "TRACER_C_ABI", span._C_ABI),
        ("agent_sim", "_cdecode.c", "CDECODE_ABI", agent_sim._CDECODE_ABI),
    ],
)
def test_the_abi_is_bumped_with_the_c_sources(package: str, header: str, define: str, python_abi: int) -> None:
    # Any edit to <package>/_c*.[ch] fails this until the digest is updated:
    # the moment to bump the ABI if the module's Python-visible interface changed.
    text = Path(REPO, package, header).read_text()
    c_abi = int(re.search(rf"#define {define} (\d+)", text).group(1))  # type: ignore[union-attr]
    assert c_abi == python_abi, f"{define} ({package}/{header}) and the Python side's ABI differ"
    recorded = dict((line.split()[0], line.split()[1:]) for line in DIGEST_FILE.read_text().splitlines())
    now = _sources_digest(package)
    assert recorded.get(package) == [str(c_abi), now], (
        f"{package}'s C sources changed: if a module's Python-visible interface changed (a function, type, argument"
        f" or result), bump {define} in {package}/{header} and its Python twin; then write the line"
        f" '{package} {c_abi} {now}' (with the new ABI) into {DIGEST_FILE}"
    )


def _run_beside_bumped_abi(tmp_path: Path, package: str, module: str, constant: str, abi: int, code: str) -> Any:
    """Run ``code`` over a copy of ``package`` (its built modules included)
    whose ``module`` expects ABI ``abi + 1``; from tmp_path (python -c puts
    the working directory first on sys.path). Checks the copy was used."""
    shutil.copytree(os.path.join(REPO, package), tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / package / module
    text = path.read_text()
    assert f"{constant} = {abi}\n" in text
    path.write_text(text.replace(f"{constant} = {abi}\n", f"{constant} = {abi + 1}\n"))
    code += f"import {package}; print({package}.__file__.startswith({str(tmp_path)!r}))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert_clean_output(proc.stderr)
    assert proc.stdout.splitlines()[-1] == "True", proc.stdout
    return proc


@pytest.mark.skipif(_cdecode is None, reason="agent_sim._cdecode is not built")
def test_a_stale_receiver_build_is_refused_with_the_fix(tmp_path: Path) -> None:
    code = (
        "import msgpack, agent_sim\n"
        "from agent_sim import decode, stats, store\n"
        "print(decode._fast_unpackb, stats._fast_groups, store._fast_rows, hasattr(agent_sim, '_cdecode'))\n"
        "print(len(decode.decode_v04(msgpack.packb([[{'trace_id': 1, 'span_id': 2, 'name': 'n', 'service': 's',"
        " 'resource': 'r', 'start': 1, 'duration': 1}]]))))\n"
    )
    proc = _run_beside_bumped_abi(tmp_path, "agent_sim", "__init__.py", "_CDECODE_ABI", agent_sim._CDECODE_ABI, code)
    assert proc.stdout.splitlines() == ["None None None False", "1", "True"], proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "was built from other sources" in line]
    assert len(warnings) == 1 and "pip install -e ." in warnings[0], proc.stderr


@pytest.mark.skipif(span._cspan is None or encoding._cencode is None, reason="the C modules are not in use")
def test_the_built_modules_match() -> None:
    assert span._cspan.ABI == encoding._cencode.ABI == span._C_ABI
    if _cdecode is not None:
        assert _cdecode.ABI == agent_sim._CDECODE_ABI
    assert span.stale_builds == {}


@pytest.mark.skipif(span._cspan is None or encoding._cencode is None, reason="the C modules are not built")
def test_a_stale_build_is_refused_with_the_fix(tmp_path: Path) -> None:
    # The built modules next to Python files that expect another ABI.
    code = (
        "import tracer, tracer.processor\n"
        "from tracer import encoding, run, span\n"
        "print(span._cspan, encoding._cencode, tracer.processor._cencode)\n"
        "print(run.span_code())\n"
        "print(run.encoder_code())\n"
        "with tracer.tracer.trace('works') as s:\n"
        "    pass\n"
        "print(s.duration_ns is not None)\n"
    )
    proc = _run_beside_bumped_abi(tmp_path, "tracer", "span.py", "_C_ABI", span._C_ABI, code)
    lines = proc.stdout.splitlines()
    assert lines[0] == "None None None" and lines[-2] == "True"
    for name, line in (("_cspan", lines[1]), ("_cencode", lines[2])):
        assert line.startswith(f"pure Python: tracer.{name} was built from other sources") and "pip install -e ." in line
    warnings = [line for line in proc.stderr.splitlines() if "was built from other sources" in line]
    assert len(warnings) == 2, proc.stderr  # once per module (_cencode is loaded twice)
    assert f"(ABI {span._C_ABI}, these files need {span._C_ABI + 1})" in warnings[0]
