"""A private MariaDB server for the test suite.

``MariaDB.start()`` builds a throw-away server: a data directory and socket
under a temporary directory, a random free TCP port on 127.0.0.1, database
``testdb`` and user ``test`` (for both ``127.0.0.1`` and ``localhost``: the
server may see a TCP client from 127.0.0.1 as ``localhost``). ``stop()``
sends SIGTERM to the PID we started (never by name) and removes the
directory.

The session-scoped ``mariadb`` fixture starts one server for the whole run;
``tests/conftest.py`` re-exports it. The binary comes from ``MARIADBD``
(``.ci/run`` exports it), else ``mariadbd`` on PATH or ``/usr/sbin/mariadbd``;
missing, tests skip loudly (fail when ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.utils import free_port, real_part

USER = "test"
PASSWORD = "test-pw-4711"
DATABASE = "testdb"


@dataclass(frozen=True)
class MariaDBInfo:
    """Where to reach the server; ``socket`` is the Unix socket path."""

    host: str
    port: int
    user: str
    password: str
    db: str
    socket: str


def _tool(server: str, name: str) -> str:
    """``mariadb-install-db`` / ``mariadb-admin`` / ``mariadb``: next to the
    server's install, else on PATH."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(server)))  # /usr/sbin/.. -> /usr
    for candidate in (os.path.join(prefix, "bin", name), shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(f"{name} not found next to {server} nor on PATH")


class MariaDB:
    """One private server process; use ``start()`` then ``stop()``."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.dir = tempfile.mkdtemp(prefix="tracer-mariadb-")
        self.datadir = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.dir, "mysqld.log")
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    def _user_args(self) -> list[str]:
        # As root the server must drop to the mysql user, which then owns the files.
        return ["--user=mysql"] if self.as_root else []

    def start(self, timeout: float = 30.0) -> MariaDBInfo:
        os.makedirs(self.datadir)
        if self.as_root:
            os.chmod(self.dir, 0o755)
            subprocess.run(["chown", "-R", "mysql:mysql", self.dir], check=True)
        install = subprocess.run(
            [
                _tool(self.server, "mariadb-install-db"),
                "--no-defaults",
                *self._user_args(),
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.server,
                    "--no-defaults",
                    *self._user_args(),
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--pid-file={os.path.join(self.dir, 'mysqld.pid')}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    f"--log-error={self.log_path}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout)
        self.sql(
            f"CREATE DATABASE IF NOT EXISTS {DATABASE};"
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"CREATE USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';"
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';"
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'localhost';"
            "FLUSH PRIVILEGES;"
        )
        return MariaDBInfo("127.0.0.1", self.port, USER, PASSWORD, DATABASE, self.socket)

    def _wait_ready(self, timeout: float) -> None:
        admin = _tool(self.server, "mariadb-admin")
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self._log_tail()}")
            ping = subprocess.run(
                [admin, "--no-defaults", f"--socket={self.socket}", "-uroot", "--connect-timeout=1", "ping"],
                capture_output=True,
                timeout=10,
            )
            if ping.returncode == 0 and b"alive" in ping.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd not ready after {timeout}s:\n{self._log_tail()}")
            time.sleep(0.05)

    def sql(self, statements: str) -> str:
        """Run statements as root over the socket with the ``mariadb`` client."""
        client = _tool(self.server, "mariadb")
        done = subprocess.run(
            [client, "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", statements],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb client failed: {done.stderr}")
        return done.stdout

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBInfo]:
    """One MariaDB server for the whole test session."""
    server = real_part("MARIADBD", ["mariadbd", "/usr/sbin/mariadbd"], "MariaDB server")
    db = MariaDB(server)
    try:
        info = db.start()
    except Exception:
        db.stop()
        raise
    try:
        yield info
    finally:
        db.stop()
