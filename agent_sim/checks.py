"""Custom checks: ``agent-sim serve --checks DIR`` runs every ``DIR/*.py`` on an interval.

A check is a class with a ``check(self, instance)`` method deriving from
``AgentCheck`` (importable as ``from agent_sim.checks import AgentCheck``,
and as ``from datadog_checks.base import AgentCheck`` when the real
``datadog-checks-base`` is not installed: a shim module is registered). The
Agent's methods supported, with the Agent's meaning:

    gauge, count, monotonic_count, rate, histogram(name, value, tags=None, hostname=None)
    service_check(name, status, tags=None, hostname=None, message=None)
    event(dict with msg_title, msg_text, tags, ...)
    OK / WARNING / CRITICAL / UNKNOWN, self.name, self.init_config, self.instance(s), self.log

Configuration, as the Agent's ``conf.d``: an optional ``DIR/<check>.yaml`` (read
with PyYAML, when installed) or ``DIR/<check>.json`` beside ``DIR/<check>.py``
holding ``init_config`` (a mapping) and ``instances`` (a non-empty list of
mappings); without one the check runs with one empty instance. As the Agent
does, each instance is its own check object run every ``min_collection_interval``
seconds (the instance's key, else the class attribute, else ``--check-interval``,
default 15), on its own thread, so a slow one delays only itself. A check that raises (or a file that
does not import, or a bad configuration file) is reported as the service check ``datadog.agent.check_status``
CRITICAL tagged ``check:<name>`` plus a log line, retried next interval, and
never stops the receiver or the other checks; a run that succeeds reports OK.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
import types
from typing import Any

from agent_sim.dogstatsd import Aggregator, Event, Sample, ServiceCheck

DEFAULT_INTERVAL_S = 15.0
STATUS_CHECK = "datadog.agent.check_status"


class ConfigError(ValueError):
    """A check's configuration file is unreadable or malformed (the message names the file)."""


def read_config(directory: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(init_config, instances)`` of check ``name`` from ``DIR/<name>.yaml`` or ``.json``;
    ``({}, [{}])`` without either. Raises ``ConfigError`` saying what is wrong."""
    found = [f"{name}.{ext}" for ext in ("yaml", "json") if os.path.isfile(os.path.join(directory, f"{name}.{ext}"))]
    if not found:
        return {}, [{}]
    if len(found) > 1:
        raise ConfigError(f"both {found[0]} and {found[1]}: keep one")
    (filename,) = found
    with open(os.path.join(directory, filename), encoding="utf-8") as f:
        text = f.read()
    if filename.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{filename}: not JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{filename}: reading YAML needs PyYAML (pip install pyyaml); "
                              f"or write the same as {name}.json") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{filename}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: expected a mapping with an instances list, got {type(data).__name__}")
    init_config = data.get("init_config")
    if init_config is None:  # "init_config:" with nothing under it, as the Agent's examples have
        init_config = {}
    instances = data.get("instances")
    if not isinstance(init_config, dict):
        raise ConfigError(f"{filename}: init_config must be a mapping, got {type(init_config).__name__}")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise ConfigError(f"{filename}: instances must be a non-empty list of mappings, got {instances!r}")
    for instance in instances:
        every = instance.get("min_collection_interval")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float))
                                  or not 0 < every < math.inf):
            raise ConfigError(f"{filename}: min_collection_interval must be a number of seconds > 0, got {every!r}")
    return init_config, instances


class AgentCheck:
    """The Agent's check base class, for the methods listed in the module docstring."""

    OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3

    def __init__(self, name: str = "", init_config: dict[str, Any] | None = None,
                 instances: list[dict[str, Any]] | None = None) -> None:
        self.name = name or type(self).__name__
        self.init_config = init_config or {}
        self.instances = instances or [{}]
        self.instance = self.instances[0]
        self.log = logging.getLogger(f"agent_sim.checks.{self.name}")
        self.aggregator: Aggregator | None = None  # set by the runner
        self._previous: dict[tuple[str, tuple[str, ...]], tuple[float, float]] = {}

    def check(self, instance: dict[str, Any]) -> None:
        raise NotImplementedError("a check defines check(self, instance)")

    def _submit(self, kind: str, name: str, value: Any, tags: Any) -> None:
        _number(name, value)
        if self.aggregator is not None:
            self.aggregator.submit(Sample(name, kind, [float(value)], tags=_tags(tags)), time.time())

    def gauge(self, name: str, value: float, tags: list[str] | None = None, hostname: str | None = None) -> None:
        self._submit("g", name, value, tags)

    def count(self, name: str, value: float, tags: list[str] | None = None, hostname: str | None = None) -> None:
        self._submit("c", name, value, tags)

    def histogram(self, name: str, value: float, tags: list[str] | None = None, hostname: str | None = None) -> None:
        self._submit("h", name, value, tags)

    def monotonic_count(self, name: str, value: float, tags: list[str] | None = None,
                        hostname: str | None = None) -> None:
        """Counts the increase since the previous call for this context (none on the first, or after a reset)."""
        previous = self._remember(name, value, tags)
        if previous is not None and value >= previous[0]:
            self._submit("c", name, value - previous[0], tags)

    def rate(self, name: str, value: float, tags: list[str] | None = None, hostname: str | None = None) -> None:
        """A gauge of the change per second since the previous call for this context (none on the first)."""
        previous = self._remember(name, value, tags)
        if previous is not None and time.monotonic() > previous[1]:
            self._submit("g", name, (value - previous[0]) / (time.monotonic() - previous[1]), tags)

    def _remember(self, name: str, value: float, tags: Any) -> tuple[float, float] | None:
        _number(name, value)
        key = (name, _tags(tags))
        previous = self._previous.get(key)
        self._previous[key] = (float(value), time.monotonic())
        return previous

    def service_check(self, name: str, status: int, tags: list[str] | None = None, hostname: str | None = None,
                      message: str | None = None) -> None:
        if status not in (0, 1, 2, 3):
            raise ValueError(f"{name}: service check status must be 0..3 (AgentCheck.OK..UNKNOWN), got {status!r}")
        fields = {"h": hostname} if hostname else {}
        if self.aggregator is not None:
            self.aggregator.submit_events(checks=(ServiceCheck(name, status, fields, _tags(tags), message or ""),))

    def event(self, event: dict[str, Any]) -> None:
        fields = {k[0]: str(event[v]) for k, v in (("d", "timestamp"), ("h", "host"), ("k", "aggregation_key"),
                                                   ("p", "priority"), ("s", "source_type_name"),
                                                   ("t", "alert_type")) if event.get(v) is not None}
        if self.aggregator is not None:
            self.aggregator.submit_events(events=(Event(str(event.get("msg_title", "")), str(event.get("msg_text", "")),
                                                        fields, _tags(event.get("tags"))),))


def _number(name: Any, value: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: value must be a finite number, got {value!r}")


def _tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"tags must be a list of strings, got {tags!r}")
    return tuple(sorted(set(tags)))


def install_shim() -> None:
    """Make ``from datadog_checks.base import AgentCheck`` work, unless the real package is installed."""
    if "datadog_checks" in sys.modules or importlib.util.find_spec("datadog_checks") is not None:
        return
    package = types.ModuleType("datadog_checks")
    package.__path__ = []
    base = types.ModuleType("datadog_checks.base")
    base.AgentCheck = AgentCheck  # type: ignore[attr-defined]
    package.base = base  # type: ignore[attr-defined]
    sys.modules["datadog_checks"] = package
    sys.modules["datadog_checks.base"] = base


class CheckRunner:
    """Runs checks on their own daemon threads until ``stop()``.

    ``add(check, interval)`` runs an ``AgentCheck`` instance; ``load_dir(path)``
    adds every ``*.py`` of a directory (the ones that fail to import are
    reported, see the module docstring)."""

    def __init__(self, aggregator: Aggregator, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.aggregator = aggregator
        self.interval = interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def load_dir(self, directory: str) -> None:
        install_shim()
        for filename in sorted(os.listdir(directory)):
            if not filename.endswith(".py") or filename.startswith("_"):
                continue
            name = filename[:-3]
            try:
                spec = importlib.util.spec_from_file_location(f"agent_sim_check_{name}", os.path.join(directory, filename))
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, AgentCheck)
                           and c is not AgentCheck and c.__module__ == module.__name__]
                if not classes:
                    raise ValueError("defines no AgentCheck subclass")
                init_config, instances = read_config(directory, name)
                checks = [(classes[0](name, init_config, [instance]), instance.get("min_collection_interval"))
                          for instance in instances]
            except Exception as exc:
                self._report(name, exc)
                continue
            for check, every in checks:
                self.add(check, every)

    def add(self, check: AgentCheck, interval: float | None = None) -> None:
        check.aggregator = self.aggregator
        every = interval or float(getattr(check, "min_collection_interval", 0) or self.interval)
        thread = threading.Thread(target=self._loop, args=(check, every), name=f"agent_sim-check-{check.name}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self, check: AgentCheck, every: float) -> None:
        failing = ""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                check.check(check.instance)
            except Exception as exc:
                summary = f"{type(exc).__name__}: {exc}"
                if summary != failing:  # one log line per new failure, not one per interval
                    failing = summary
                    self._report(check.name, exc, every)
                else:
                    self._status(check.name, AgentCheck.CRITICAL, summary)
            else:
                failing = ""
                self._status(check.name, AgentCheck.OK, "")
            self._stop.wait(max(0.0, every - (time.monotonic() - started)))

    def _status(self, name: str, status: int, message: str) -> None:
        self.aggregator.submit_events(checks=(ServiceCheck(STATUS_CHECK, status, {}, (f"check:{name}",), message),))

    def _report(self, name: str, exc: BaseException, every: float | None = None) -> None:
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        if isinstance(exc, ConfigError):  # its message names the file; checks.py:N would mislead
            where = None
        at = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
        retry = f"; retried every {every:g} s" if every else "; not loaded"
        # One write of the whole line: print() writes the text and its newline
        # apart, so two checks' threads failing at once ran their lines together.
        sys.stderr.write(f"agent_sim: check {name} failed: {type(exc).__name__}: {exc}{at}{retry}\n")
        sys.stderr.flush()
        self._status(name, AgentCheck.CRITICAL, f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
