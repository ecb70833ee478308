"""Integration registry: ``patch_all()``, ``patch()``, ``unpatch()``, ``status()``.

How an integration plugs in: one folder, ``contrib/<name>/``
------------------------------------------------------------
``contrib/<name>/__init__.py`` declares the integration once, and imports
nothing but this module (it is read before the library is imported)::

    INTEGRATION = Integration("requests", hooks_module="requests", dist="requests", supported=">=2.20,<3")

The fields (see :class:`Integration`): the keyword (``patch(requests=True)``,
``TRACER_PATCH_REQUESTS``); the module whose import triggers patching; the
distribution whose installed version is checked (None: stdlib, Python's
version); ``default`` (on in ``patch_all()``, True unless given); the
supported range (comma-separated ``>= > <= < == !=`` clauses, "" for any);
``contrib_module``, which holds the patch targets (default
``contrib.<name>.patch``).

``contrib/<name>/patch.py`` (imported only once the library is) holds the
patch targets, ``TARGETS``: a tuple of :class:`Target` ``(module, attribute
path, wrapper)``, e.g. ``Target("requests.sessions", "Session.send", w)``,
each wrapper built by ``tracer._errors.guarded_wrapper``; and
``patch, unpatch = integration_functions("<name>")``. This one table drives
both directions, so unpatch can never drift from patch; the generic
:func:`patch_integration` checks the installed version against
``supported`` first (outside it: one warning line, nothing patched), so a
direct ``contrib.<name>.patch.patch()`` is as safe as the registry's. Both
are idempotent: ``patch_targets`` keeps a marker attribute (``MARKER``) on
the hooks module, and unpatch restores the exact original objects. The
contract suite (``tests/contrib/contract.py``) checks all of it for every
integration.

The registry
------------
:func:`registry` (also ``REGISTRY``) finds the declarations by listing the
``contrib`` package: adding an integration is adding a folder. A contrib
module that does not exist or a library that is not installed is skipped
silently (debug log); an integration that raises while patching is logged
once and the others proceed. Everything here runs on the caller's thread, or
on whichever thread imports the library (the hook); nothing here ever raises
into the app.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
import re
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import wrapt

from tracer._errors import internal_error
from tracer.config import config
from tracer.span import _cspan

log = logging.getLogger("tracer")

#: Attribute set on a hooks module while its integration is applied.
MARKER = "_tracer_patched"


class Integration(NamedTuple):
    """One integration, declared once in ``contrib/<name>/__init__.py``."""

    name: str  # keyword of patch() and patch_all(); TRACER_PATCH_<NAME>
    hooks_module: str  # patched when this module is imported; carries MARKER
    dist: str | None  # distribution name for importlib.metadata; None = stdlib
    default: bool = True  # enabled by patch_all() unless TRACER_PATCH_<NAME> says otherwise
    supported: str = ""  # version range, e.g. ">=2.2,<4"; "" = every version
    contrib_module: str = ""  # holds TARGETS (and patch()/unpatch()); default contrib.<name>.patch

    def installed_version(self) -> str | None:
        """The library's version without importing it (None: not installed);
        stdlib integrations report Python's."""
        if self.dist is None:
            return python_version()
        return dist_version(self.dist) or None

    def refusal(self, version: str) -> str:
        """Why ``version`` is not patched ("" when it is supported)."""
        if self.supported and not version_in_range(version, self.supported):
            return f"version {version} not supported (supported: {self.supported})"
        return ""


_registry: dict[str, Integration] | None = None


def registry() -> dict[str, Integration]:
    """Every declared integration by name, found once: each package
    ``contrib/<name>/`` whose ``__init__`` defines ``INTEGRATION``. Imports
    those small modules, never the libraries."""
    global _registry
    if _registry is None:
        found: dict[str, Integration] = {}
        try:
            package = importlib.import_module("contrib")
        except ImportError:
            package = None
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not info.ispkg or info.name.startswith("_"):
                continue
            try:
                entry = importlib.import_module(f"contrib.{info.name}").INTEGRATION
                found[entry.name] = entry._replace(contrib_module=entry.contrib_module or f"contrib.{info.name}.patch")
            except Exception as exc:
                internal_error(f"declare.{info.name}", exc)
        _registry = found
    return _registry


def __getattr__(name: str) -> Any:
    # ``REGISTRY`` stays a plain module attribute for readers, filled on first
    # use: contrib's declarations import this module, so reading them at its
    # own import would be circular.
    if name == "REGISTRY":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- helpers for contrib modules ------------------------------------------------
class Target(NamedTuple):
    """One patched callable: ``module`` (dotted, imported by patch_targets),
    ``name`` (attribute path inside it, e.g. ``"Session.send"``) and the wrapt
    wrapper ``wrapper(wrapped, instance, args, kwargs)``.

    ``replace=True`` (for a plain function or method on a per-call hot path):
    ``wrapper(original)`` returns a plain function put in the original's
    place, no wrapt. A wrapt wrapper on a method builds a bound wrapper
    object and an args tuple on every call (≈ 1.5 µs); a plain function is
    bound as any method is (≈ 0.1 µs)."""

    module: str
    name: str
    wrapper: Callable[..., Any]
    replace: bool = False


def _owner(target: Target) -> tuple[Any, str]:
    obj: Any = importlib.import_module(target.module)
    *parents, attr = target.name.split(".")
    for part in parents:
        obj = getattr(obj, part)
    return obj, attr


def patch_targets(hooks_module: str, targets: tuple[Target, ...] | list[Target]) -> bool:
    """Wrap every target once; set the marker on ``hooks_module``.

    Returns False (and changes nothing) if already patched. Called by a
    contrib ``patch()``; raises if a target is missing (the registry logs it),
    after undoing the targets it already wrapped."""
    marker_module = importlib.import_module(hooks_module)
    if getattr(marker_module, MARKER, False):
        return False
    done: list[Target] = []
    try:
        for target in targets:
            owner, attr = _owner(target)
            if target.replace:
                _replace(owner, attr, target.wrapper)
            else:
                wrapt.wrap_function_wrapper(owner, attr, target.wrapper)
            done.append(target)
    except Exception:
        _unwrap_all(done)
        raise
    setattr(marker_module, MARKER, True)
    return True


# What a replace target's factory returns: a plain function, or a C callable
# made from one (contrib/flask's ``_cspan.EnsureSync``). Only these are
# taken for ours by unpatch: another tool's proxy over ours would pass the
# marker's getattr on to ours.
_REPLACEMENTS: tuple[type, ...] = (types.FunctionType,) if _cspan is None else (types.FunctionType, _cspan.EnsureSync)


def _replace(owner: Any, attr: str, factory: Callable[..., Any]) -> None:
    raw = inspect.getattr_static(owner, attr)  # AttributeError when missing
    if not isinstance(raw, types.FunctionType):  # (another tool's wrapt wrapper passes as one)
        raise TypeError(f"{attr}: a replace target must be a plain function, not {type(raw).__name__}")
    # Called through the class: a wrapt wrapper under ours then sees its instance.
    replacement: Any = functools.update_wrapper(factory(getattr(owner, attr)), raw)  # __wrapped__: what unpatch puts back
    replacement._tracer_factory = factory  # how unpatch knows its own
    setattr(owner, attr, replacement)


def patch_integration(name: str) -> bool:
    """Patch integration ``name`` from its declaration: the version check,
    then its ``TARGETS``. True when it patched; outside the supported range,
    one warning line (once per version) and False. Imports the library;
    raises if a target is missing (the registry logs it)."""
    entry = registry()[name]
    if _refused(name, entry):
        return False
    return patch_targets(entry.hooks_module, importlib.import_module(entry.contrib_module).TARGETS)


def unpatch_integration(name: str) -> bool:
    """Restore every target of integration ``name``; False if it was not patched."""
    entry = registry()[name]
    module = sys.modules.get(entry.contrib_module)
    return module is not None and unpatch_targets(entry.hooks_module, module.TARGETS)


def integration_functions(name: str) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """``patch, unpatch = integration_functions("flask")`` in a ``patch.py``."""
    return functools.partial(patch_integration, name), functools.partial(unpatch_integration, name)


def unpatch_targets(hooks_module: str, targets: tuple[Target, ...] | list[Target]) -> bool:
    """Put back the exact original of every target; clear the marker.
    Returns False if it was not patched."""
    marker_module = sys.modules.get(hooks_module)
    if marker_module is None or not getattr(marker_module, MARKER, False):
        return False
    _unwrap_all(list(targets))
    try:
        delattr(marker_module, MARKER)
    except AttributeError:
        pass
    return True


def _unwrap_all(targets: list[Target]) -> None:
    for target in reversed(targets):
        owner, attr = _owner(target)
        # The raw attribute (a class's __dict__ entry), not a bound wrapper.
        current = inspect.getattr_static(owner, attr, None)
        # Only our own wrapper: one another tool put on top of ours stays.
        if target.replace:
            ours = type(current) in _REPLACEMENTS and getattr(current, "_tracer_factory", None) is target.wrapper
        else:
            ours = isinstance(current, wrapt.FunctionWrapper) and getattr(current, "_self_wrapper", None) is target.wrapper
        if not ours:
            log.debug("tracer: %s.%s is not our wrapper; left in place", target.module, target.name)
            continue
        original = current.__wrapped__
        # A method inherited from a base class was not in the owner's own
        # __dict__ before: dropping the wrapper exposes the original again.
        delattr(owner, attr)
        if inspect.getattr_static(owner, attr, None) is not original:
            setattr(owner, attr, original)


def is_patched(name: str) -> bool:
    """True while integration ``name`` is applied in this process (applied by
    the registry, or the hooks module carries ``MARKER``)."""
    entry = registry().get(name)
    if entry is None:
        return False
    if name in _applied:
        return True
    module = sys.modules.get(entry.hooks_module)
    return bool(module is not None and getattr(module, MARKER, False))


def dist_version(dist: str) -> str:
    """Installed version of distribution ``dist`` without importing it ('' if unknown)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except Exception:
        return ""


def python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


# -- version ranges --------------------------------------------------------------
def _vtuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.strip().split("."):
        digits = re.match(r"\d*", piece).group()  # type: ignore[union-attr]
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):  # "0rc1": the numeric prefix ends the release
            break
    return tuple(parts)


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    width = max(len(a), len(b))
    a = a + (0,) * (width - len(a))
    b = b + (0,) * (width - len(b))
    return (a > b) - (a < b)


_OPS: dict[str, Callable[[int], bool]] = {
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    "==": lambda c: c == 0,
    "!=": lambda c: c != 0,
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
}


def version_in_range(version: str, spec: str) -> bool:
    """``version_in_range("3.1.0", ">=2.2,<4")``. Unparseable version: False."""
    have = _vtuple(version)
    if not have:
        return False
    for clause in spec.split(","):
        clause = clause.strip()
        if not clause:
            continue
        m = re.match(r"(>=|<=|==|!=|>|<)\s*(\S+)$", clause)
        if m is None:
            raise ValueError(f"bad version range clause {clause!r} in {spec!r}")
        if not _OPS[m.group(1)](_cmp(have, _vtuple(m.group(2)))):
            return False
    return True


# -- registry state ----------------------------------------------------------------
_lock = threading.Lock()
_wanted: dict[str, bool] = {}  # last decision per integration (patch_all / patch / unpatch)
_hooked: set[str] = set()  # post-import hook registered and not fired yet
_reasons: dict[str, str] = {}  # why an integration is not applied
_applied: set[str] = set()  # patch() returned and no unpatch() since
_warned_versions: set[tuple[str, str]] = set()  # unsupported versions already logged


def _is_missing(exc: ImportError, module_path: str) -> bool:
    """The contrib module itself (or its package) does not exist."""
    missing = getattr(exc, "name", None)
    if not missing:
        return False
    return module_path == missing or module_path.startswith(missing + ".")


def _load_contrib(name: str) -> Any | None:
    entry = registry()[name]
    try:
        return importlib.import_module(entry.contrib_module)
    except ImportError as exc:
        if _is_missing(exc, entry.contrib_module):
            _reasons[name] = f"integration module {entry.contrib_module} not available"
            log.debug("tracer: %s: %s", name, _reasons[name])
            return None
        raise


def _refused(name: str, entry: Integration) -> bool:
    """True (after one warning line per version) when the installed version
    of ``name`` is outside its declared range."""
    version = entry.installed_version() or ""
    reason = entry.refusal(version)
    if not reason:
        return False
    _reasons[name] = reason
    if (name, version) not in _warned_versions:
        _warned_versions.add((name, version))
        log.warning("tracer: not patching %s: %s", name, reason)
    return True


def _apply(name: str) -> None:
    """Patch ``name`` now (its library is imported). Never raises."""
    if not _wanted.get(name):
        return
    try:
        if _refused(name, registry()[name]):
            return
        module = _load_contrib(name)
        if module is None:
            return
        module.patch()  # idempotent by contract
        _applied.add(name)
        _reasons.pop(name, None)
        log.debug("tracer: patched %s", name)
    except Exception as exc:
        _reasons[name] = f"failed: {exc!r}"
        internal_error(f"patch.{name}", exc)


def _on_import(name: str) -> Callable[[Any], None]:
    def hook(_module: Any) -> None:
        with _lock:
            _hooked.discard(name)
        _apply(name)

    return hook


def _install(name: str) -> None:
    entry = registry()[name]
    if entry.hooks_module in sys.modules:
        _apply(name)
        return
    with _lock:
        if name in _hooked:
            return  # the pending hook reads _wanted when it fires
        _hooked.add(name)
    # Fires at once if the module got imported meanwhile; never imports it.
    wrapt.register_post_import_hook(_on_import(name), entry.hooks_module)


def _check_names(names: dict[str, bool]) -> dict[str, bool]:
    known = {}
    declared = registry()
    for key, value in names.items():
        if key in declared:
            known[key] = bool(value)
        else:
            log.warning("tracer: unknown integration %r ignored (known: %s)", key, ", ".join(declared))
    return known


# -- public API ------------------------------------------------------------------
def patch_all(**overrides: bool) -> None:
    """Enable every integration that is on by default or by ``TRACER_PATCH_<X>``;
    an explicit keyword (``patch_all(flask=False)``) beats the environment.

    Libraries already imported are patched now; the others when (and if) the
    app imports them. Imports no integrated library. Also starts log
    correlation (``tracer.logs``) when ``TRACER_LOGS_INJECTION`` is on: the one
    place that does, for ``tracer-run`` and ``import tracer`` alike; and makes
    SIGTERM flush what is finished before the process ends
    (``tracer._sigterm``). No-op when
    ``TRACER_ENABLED=false``. Never raises."""
    if not config.enabled:
        log.debug("tracer: TRACER_ENABLED=false, patch_all() does nothing")
        return
    if config.logs_injection:
        try:
            from tracer import logs

            logs.install()
        except Exception:
            internal_error("logs.install")
    from tracer import _sigterm

    _sigterm.install()
    chosen = _check_names(overrides)
    for name, entry in registry().items():
        enabled = chosen[name] if name in chosen else config.patch_enabled(name, entry.default)
        _wanted[name] = enabled
        if enabled:
            _install(name)
        else:
            _reasons[name] = "disabled"


def patch(**integrations: bool) -> None:
    """``patch(flask=True, requests=True)``: enable exactly the named
    integrations (a ``False`` value is ignored), whatever the environment says."""
    if not config.enabled:
        log.debug("tracer: TRACER_ENABLED=false, patch() does nothing")
        return
    for name, enabled in _check_names(integrations).items():
        if enabled:
            _wanted[name] = True
            _install(name)


def unpatch(**integrations: bool) -> None:
    """Restore the originals of the named integrations (``unpatch(flask=True)``),
    or of every integration when none is named. A pending hook for a library
    not imported yet no longer patches it. Never raises."""
    chosen = _check_names(integrations)
    names = [n for n, v in chosen.items() if v] if chosen else list(registry())
    for name in names:
        _wanted[name] = False
        _reasons[name] = "unpatched"
        # Only a loaded contrib module can have patched anything.
        module = sys.modules.get(registry()[name].contrib_module)
        _applied.discard(name)
        if module is None:
            continue
        try:
            module.unpatch()  # idempotent by contract
        except Exception as exc:
            internal_error(f"unpatch.{name}", exc)


def installed_version(name: str) -> str | None:
    """Version of the library behind ``name`` without importing it; None if
    not installed. Stdlib integrations report Python's version."""
    return registry()[name].installed_version()


def status() -> dict[str, dict[str, Any]]:
    """Per integration: ``enabled`` (this process's decision, else the
    environment's), ``installed_version`` (None: not installed), ``supported``
    (None: unknown), ``patched`` and a human ``reason`` when it is not applied.

    Imports contrib modules (which may import their library): meant for
    ``tracer-run --info`` and debugging, not for hot paths."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in registry().items():
        enabled = _wanted.get(name, config.enabled and config.patch_enabled(name, entry.default))
        version = entry.installed_version()
        supported: bool | None = None
        reason = ""
        if version is None:
            reason = f"not installed ({entry.dist})"
        else:
            try:
                importlib.import_module(entry.contrib_module)  # it must load, not only be declared
            except ImportError as exc:
                if _is_missing(exc, entry.contrib_module):
                    reason = f"integration module {entry.contrib_module} not available"
                else:
                    reason = f"integration fails to import: {exc!r}"
            except Exception as exc:
                reason = f"integration fails to import: {exc!r}"
            else:
                reason = entry.refusal(version)
                supported = not reason
        patched = is_patched(name)
        if not reason and not patched:
            if not config.enabled:
                reason = "tracing disabled (TRACER_ENABLED=false)"
            elif not enabled:
                reason = _reasons.get(name) or f"disabled (TRACER_PATCH_{name.upper()}=false)"
            elif name in _hooked:
                reason = f"waiting for the app to import {entry.hooks_module}"
            else:
                reason = _reasons.get(name, "")
        out[name] = {
            "enabled": bool(enabled),
            "installed_version": version,
            "supported": supported,
            "patched": patched,
            "reason": "" if patched else reason,
        }
    return out
