"""The definitions file of ``agent-sim serve --monitors FILE``: JSON, or YAML when
PyYAML is installed; reloaded when it changes.

Shape: ``{"monitors": [<Datadog monitor JSON>…], "downtimes": [<Datadog v1
downtime>…], "webhooks": {"name": "http://…"}}``, or just a list of monitors.
A file that does not parse keeps what was loaded before; a bad definition in
it is reported and the others load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from agent_sim.monitors.engine import Engine


class DefinitionsError(ValueError):
    pass


def read_definitions(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise DefinitionsError(f"{path}: YAML needs PyYAML (pip install pyyaml), or use JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DefinitionsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DefinitionsError(f"{path}: not valid JSON: {exc}") from None


class FileWatcher:
    """``check()`` reloads ``path`` into ``engine`` when its mtime or size changed (the runner calls it every second)."""

    def __init__(self, path: str, engine: Engine, log: Callable[[str], None]) -> None:
        self.path = path
        self.engine = engine
        self.log = log
        self._seen: tuple[int, int] | None = None

    def check(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._seen != (0, 0):
                self.log(f"agent-sim monitors: cannot read {self.path}: {exc.strerror or exc}")
                self._seen = (0, 0)
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            errors = self.engine.load(read_definitions(self.path))
        except (OSError, DefinitionsError) as exc:
            self.log(f"agent-sim monitors: {exc} (keeping the previous definitions)")
            return False
        for line in errors:
            self.log(f"agent-sim monitors: {self.path}: {line} (left out)")
        return True
