"""The integration registry: hooks, switches, versions, failures, unpatch."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt

from tests.utils import REPO, run_python
from tracer import _errors, _patching
from tracer._patching import Integration, Target, patch_targets, unpatch_targets, version_in_range

_counter = itertools.count()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fake library, installed as a real distribution (version 1.2, read by
    importlib.metadata), and its contrib module on disk, declared as an
    integration; ``declare(supported=...)`` changes the declared range."""
    n = next(_counter)
    lib, contrib, name = f"tracer_fakelib_{n}", f"tracer_fakecontrib_{n}", f"fake{n}"
    monkeypatch.syspath_prepend(str(tmp_path))
    dist_info = tmp_path / f"{lib}-1.2.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {lib}\nVersion: 1.2\n")

    class Fake:
        def write(self, contrib_body: str, lib_body: str = "def hello():\n    return 'hi'\n") -> None:
            (tmp_path / f"{lib}.py").write_text(lib_body)
            body = textwrap.dedent(contrib_body).replace("LIB", lib).replace("NAME", name)
            (tmp_path / f"{contrib}.py").write_text(body)

        def declare(self, supported: str) -> None:
            entry = Integration(name, lib, lib, default=True, supported=supported, contrib_module=contrib)
            monkeypatch.setitem(_patching.registry(), name, entry)

    f = Fake()
    f.lib, f.contrib, f.name = lib, contrib, name  # type: ignore[attr-defined]
    f.declare(">=1.0")
    yield f
    _patching._wanted.pop(name, None)
    _patching._applied.discard(name)
    for mod in (lib, contrib):
        sys.modules.pop(mod, None)


_GOOD = """
    from tracer._patching import Target, integration_functions
    def _wrap(wrapped, instance, args, kwargs):
        return "traced " + wrapped(*args, **kwargs)
    TARGETS = (Target("LIB", "hello", _wrap),)
    patch, unpatch = integration_functions("NAME")
"""


def test_patch_before_and_after_import_and_unpatch(fake: Any) -> None:
    import importlib

    fake.write(_GOOD)
    _patching.patch(**{fake.name: True})
    assert fake.lib not in sys.modules and fake.contrib not in sys.modules  # nothing imported yet
    lib = importlib.import_module(fake.lib)  # the hook fires here
    assert lib.hello() == "traced hi"
    _patching.patch(**{fake.name: True})  # already imported: applied at once, still once
    assert lib.hello() == "traced hi"
    original = vars(sys.modules[fake.contrib]).get("TARGETS")[0]
    assert original.wrapper is not None
    _patching.unpatch(**{fake.name: True})
    assert lib.hello() == "hi" and type(lib.hello).__name__ == "function"
    assert _patching.status()[fake.name]["patched"] is False


def test_missing_contrib_module_is_skipped_silently(fake: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Only the library exists; its contrib module is not written (yet).
    (Path(sys.path[0]) / f"{fake.lib}.py").write_text("X = 1\n")
    import importlib

    with caplog.at_level(logging.DEBUG, logger="tracer"):
        importlib.import_module(fake.lib)
        _patching.patch(**{fake.name: True})
    assert [r.levelno for r in caplog.records if fake.name in r.getMessage()] == [logging.DEBUG]
    assert "not available" in _patching.status()[fake.name]["reason"]


def test_unsupported_version_logs_one_line_and_skips(fake: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake.write(_GOOD)
    fake.declare(">=2.0,<3")  # the installed distribution is 1.2
    import importlib

    lib = importlib.import_module(fake.lib)
    with caplog.at_level(logging.INFO, logger="tracer"):
        _patching.patch(**{fake.name: True})
        _patching.patch(**{fake.name: True})
        assert importlib.import_module(fake.contrib).patch() is False  # direct call: checked too
    assert lib.hello() == "hi"
    (record,) = [r for r in caplog.records if fake.name in r.getMessage()]
    assert "1.2 not supported" in record.getMessage() and record.levelno == logging.WARNING
    st = _patching.status()[fake.name]
    assert st["supported"] is False and st["patched"] is False


@pytest.mark.parametrize(
    ("name", "library", "attribute"),
    [("flask", "flask", "Flask.wsgi_app"), ("requests", "requests.sessions", "Session.send")],
)
def test_real_integration_outside_its_declared_range_is_refused_with_one_line(
    name: str, library: str, attribute: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The real installed library, against a range narrowed to exclude its version:
    # neither the registry nor a direct contrib.<name>.patch.patch() may patch it.
    import importlib

    _patching.unpatch(**{name: True})  # whatever an earlier test left applied
    entry = _patching.registry()[name]
    version = entry.installed_version()
    assert version and entry.refusal(version) == ""  # supported as declared
    monkeypatch.setitem(_patching.registry(), name, entry._replace(supported=f"<{version}"))
    monkeypatch.setattr(_patching, "_warned_versions", set())
    owner, attr = _patching._owner(Target(library, attribute, _tag))
    before = inspect.getattr_static(owner, attr)
    with caplog.at_level(logging.INFO, logger="tracer"):
        _patching.patch(**{name: True})
        assert importlib.import_module(entry.contrib_module).patch() is False
        _patching.patch(**{name: True})
    assert inspect.getattr_static(owner, attr) is before
    assert not isinstance(before, wrapt.FunctionWrapper)
    (record,) = [r for r in caplog.records if r.name == "tracer"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"tracer: not patching {name}: version {version} not supported (supported: <{version})"
    assert _patching.status()[name]["supported"] is False
    _patching.unpatch(**{name: True})


def test_failing_integration_is_logged_once_and_others_proceed(fake: Any) -> None:
    fake.write(_GOOD + "    def patch():\n        raise RuntimeError('boom')\n")
    import importlib

    importlib.import_module(fake.lib)
    _patching.patch(**{fake.name: True})  # must not raise
    (where, exc) = _errors.swallowed.pop()
    assert where == f"patch.{fake.name}" and str(exc) == "boom"
    assert "failed" in _patching.status()[fake.name]["reason"]


def test_every_contrib_folder_is_declared_once() -> None:
    # Adding an integration is adding a folder: each contrib/<name>/ package
    # declares itself, and the registry holds exactly those declarations.
    contrib = Path(REPO) / "contrib"
    folders = sorted(p.name for p in contrib.iterdir() if (p / "__init__.py").exists() and not p.name.startswith("_"))
    assert sorted(_patching.registry()) == folders
    for name, entry in _patching.registry().items():
        assert entry.name == name and entry.contrib_module == f"contrib.{name}.patch"


def test_unknown_keyword_warns_and_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracer"):
        _patching.patch(nosuchlib=True)
        _patching.unpatch(nosuchlib=True)
    assert "unknown integration 'nosuchlib'" in caplog.text


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("3.1.0", ">=2.2,<4", True),
        ("2.2", ">=2.2,<4", True),
        ("2.1.9", ">=2.2,<4", False),
        ("4.0.0rc1", ">=2.2,<4", False),
        ("2.0", ">2", False),
        ("8.0.33", ">=8.0", True),
        ("1.0", "!=1.0.0", False),
        ("garbage", ">=1", False),
    ],
)
def test_version_in_range(version: str, spec: str, expected: bool) -> None:
    assert version_in_range(version, spec) is expected


def test_bad_range_raises() -> None:
    with pytest.raises(ValueError):
        version_in_range("1.0", "~=1.0")


class _Base:
    @staticmethod
    def static() -> str:
        return "static"

    def method(self) -> str:
        return "base"


class _Child(_Base):
    pass


def _tag(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> str:
    return "wrapped " + wrapped(*args, **kwargs)


def _tag_factory(original: Any) -> Any:
    # A replace=True target: the plain function put in place of ``original``.
    def method(self: Any) -> str:
        return "wrapped " + original(self)

    return method


# wrapt wrapper, or plain replacement (Target(..., replace=True)).
KINDS = pytest.mark.parametrize("wrapper, replace", [(_tag, False), (_tag_factory, True)], ids=["wrapt", "replace"])


@KINDS
def test_unpatch_of_an_inherited_method_restores_the_class_dict(wrapper: Any, replace: bool) -> None:
    mod = sys.modules[__name__]
    targets = (Target(__name__, "_Child.method", wrapper, replace),)
    before = dict(vars(_Child))
    assert patch_targets(__name__, targets) is True
    assert patch_targets(__name__, targets) is False  # marker: nothing wrapped twice
    assert _Child().method() == "wrapped base" and _Base().method() == "base"
    assert unpatch_targets(__name__, targets) is True
    assert unpatch_targets(__name__, targets) is False
    assert dict(vars(_Child)) == before and "method" not in vars(_Child)
    assert not hasattr(mod, _patching.MARKER)


@KINDS
def test_a_foreign_wrapper_on_top_of_ours_is_left_alone(wrapper: Any, replace: bool) -> None:
    targets = (Target(__name__, "_Base.method", wrapper, replace),)
    original = vars(_Base)["method"]
    patch_targets(__name__, targets)
    if replace:
        assert inspect.isfunction(vars(_Base)["method"]) and vars(_Base)["method"].__wrapped__ is original
    wrapt.wrap_function_wrapper(__name__, "_Base.method", lambda w, i, a, k: w(*a, **k) + "!")
    unpatch_targets(__name__, targets)
    assert _Base().method() == "wrapped base!"  # theirs (and ours under it) untouched
    _Base.method = original  # type: ignore[method-assign]


@KINDS
def test_missing_target_rolls_back_what_was_wrapped(wrapper: Any, replace: bool) -> None:
    original = vars(_Base)["method"]
    targets = (Target(__name__, "_Base.method", wrapper, replace), Target(__name__, "_Base.nope", wrapper, replace))
    with pytest.raises(AttributeError):
        patch_targets(__name__, targets)
    assert vars(_Base)["method"] is original
    assert not hasattr(sys.modules[__name__], _patching.MARKER)


def test_a_replace_target_over_a_foreign_wrapper_keeps_its_instance() -> None:
    original = vars(_Base)["method"]
    seen: list[Any] = []
    wrapt.wrap_function_wrapper(__name__, "_Base.method", lambda w, i, a, k: seen.append(i) or w(*a, **k) + "!")
    theirs = vars(_Base)["method"]
    targets = (Target(__name__, "_Base.method", _tag_factory, True),)
    patch_targets(__name__, targets)
    obj = _Base()
    assert obj.method() == "wrapped base!" and seen == [obj]
    unpatch_targets(__name__, targets)
    assert vars(_Base)["method"] is theirs
    _Base.method = original  # type: ignore[method-assign]


def test_a_replace_target_must_be_a_plain_function() -> None:
    targets = (Target(__name__, "_Base.static", _tag_factory, True),)
    with pytest.raises(TypeError, match="static: a replace target must be a plain function, not staticmethod"):
        patch_targets(__name__, targets)
    assert isinstance(vars(_Base)["static"], staticmethod)
    assert not hasattr(sys.modules[__name__], _patching.MARKER)


# -- fresh interpreters: real libraries, real environment ---------------------------------
_LIBS = ("flask", "requests", "concurrent.futures", "mysql.connector", "pymysql", "MySQLdb", "sqlite3")


def test_patch_all_imports_no_library() -> None:
    proc = run_python(
        "import sys, json, tracer\n"
        f"before = {{m: m in sys.modules for m in {_LIBS!r}}}\n"
        "tracer.patch_all()\n"
        f"after = {{m: m in sys.modules for m in {_LIBS!r}}}\n"
        "print(json.dumps([before, after]))\n"
    )
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == after, "patch_all() imported a library"
    # `import tracer` loads none of the third-party libraries; stdlib modules
    # may already be there (wrapt >= 2.5 imports asyncio, hence concurrent.futures).
    third_party = ("flask", "requests", "mysql.connector", "pymysql", "MySQLdb")
    assert not any(after[m] for m in third_party), after


def test_env_switch_and_explicit_keyword() -> None:
    code = """
import json, tracer
from tracer import _patching
tracer.patch_all()
import requests
import concurrent.futures
first = {n: _patching.is_patched(n) for n in ("requests", "futures")}
tracer.patch_all(requests=True)
second = {n: _patching.is_patched(n) for n in ("requests", "futures")}
tracer.patch_all(futures=False)  # does not unpatch what is applied; just not wanted
print(json.dumps([first, second]))
"""
    proc = run_python(code, env={"TRACER_PATCH_REQUESTS": "false", "DD_TRACE_FUTURES_ENABLED": "true"})
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == {"requests": False, "futures": True}
    assert second == {"requests": True, "futures": True}


def test_disabled_tracer_patches_nothing_and_status_says_why() -> None:
    code = """
import json, tracer
from tracer import _patching
tracer.patch_all()
tracer.patch(requests=True)
import requests
print(json.dumps(_patching.status()["requests"]))
"""
    proc = run_python(code, env={"TRACER_ENABLED": "false"})
    st = json.loads(proc.stdout.strip().splitlines()[-1])
    assert st["patched"] is False and "TRACER_ENABLED=false" in st["reason"]


def test_status_reports_every_integration() -> None:
    st = _patching.status()
    assert set(st) == set(_patching.REGISTRY)
    for entry in st.values():
        assert set(entry) == {"enabled", "installed_version", "supported", "patched", "reason"}
    assert st["requests"]["installed_version"] == __import__("requests").__version__
    assert st["futures"]["installed_version"] == ".".join(map(str, sys.version_info[:3]))
