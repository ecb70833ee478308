"""The two internal-error checks themselves: the autouse ``internal_errors``
fixture (tests/conftest.py) for the test process, and
``tests.utils.assert_clean_output`` for child processes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.utils import REPO, assert_clean_output, run_python
from tracer import _errors

# Run under the suite's conftest (loaded as a plugin: the file is outside tests/).
INNER_TESTS = """
import logging

import pytest

from tracer import _errors


def _swallow():
    try:
        raise KeyError("inner")
    except Exception:
        _errors.internal_error("inner.place")


def test_logged_error():
    logging.getLogger("contrib").error("contrib: lost a span")


def test_swallowed():
    _swallow()


@pytest.mark.internal_errors
def test_marked_logged_error():
    logging.getLogger("tracer").error("tracer: provoked on purpose")


@pytest.mark.internal_errors
def test_marked_swallowed():
    _swallow()


def test_warning_is_not_an_error():
    logging.getLogger("tracer").warning("tracer: receiver down")


def test_swallowed_then_taken_by_the_test():
    _swallow()
    assert _errors.swallowed.pop()[0] == "inner.place"
"""


def test_fixture_fails_unmarked_tests_on_logged_or_swallowed_errors(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-q", "-rE",
         "--rootdir", REPO, "-c", os.path.join(REPO, "pyproject.toml"), str(tmp_path / "test_inner.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    # The fixture's check runs at teardown: a caught test passes its call and errors there.
    errored = set(re.findall(r"^ERROR \S*::(\w+)", proc.stdout, re.MULTILINE))
    assert errored == {"test_logged_error", "test_swallowed"}, proc.stdout
    assert "6 passed, 2 errors" in proc.stdout, proc.stdout
    assert "1 error(s) logged by contrib; first: contrib: lost a span" in proc.stdout
    assert "tracer swallowed 1 internal error(s); first in inner.place" in proc.stdout


@pytest.mark.internal_errors
def test_marker_lets_a_test_provoke_one() -> None:
    logging.getLogger("tracer").error("tracer: provoked on purpose")
    try:
        raise ValueError("provoked")
    except ValueError:
        _errors.internal_error("test.place")


TRACEBACK = """\
Exception on /boom [GET]
Traceback (most recent call last):
  File "app.py", line 3, in boom
    raise ValueError("boom 42")
ValueError: boom 42
"""


def test_clean_output_passes_allowed_tracebacks_only() -> None:
    assert_clean_output("started\ntracer: dropped 3 span(s) so far\n")
    assert_clean_output(TRACEBACK, allow=("ValueError: boom 42",))
    with pytest.raises(pytest.fail.Exception, match="traceback ending in 'ValueError: boom 42'"):
        assert_clean_output(TRACEBACK)
    with pytest.raises(pytest.fail.Exception, match="traceback ending in 'KeyError: 1'"):
        assert_clean_output(TRACEBACK + TRACEBACK.replace('ValueError: boom 42', "KeyError: 1"),
                            allow=("ValueError: boom 42",))
    with pytest.raises(pytest.fail.Exception, match="tracer: internal error"):
        assert_clean_output("tracer: internal error in flask.hook.finish (reported once): KeyError()\n")


def test_run_python_fails_on_an_internal_error_in_the_child() -> None:
    child = textwrap.dedent(
        """
        from tracer import _errors
        try:
            raise KeyError("child")
        except Exception:
            _errors.internal_error("child.place")
        """
    )
    with pytest.raises(pytest.fail.Exception, match=r"tracer: internal error in child\.place"):
        run_python(child)
