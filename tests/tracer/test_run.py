"""``tracer-run``: real subprocesses sending to a real receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.receiver import RunningReceiver
from tests.utils import REPO, assert_clean_output, free_port, render_tree, require_program
from tracer import run

# An app that serves itself one HTTP request with requests, inside a manual span.
APP = """
import http.server, sys, threading
import requests
from tracer import tracer

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
with tracer.trace("app.work", resource="job"):
    r = requests.get("http://127.0.0.1:%d/hello?token=abc" % srv.server_address[1], timeout=5)
print("app done", r.status_code, r.text)
"""


@pytest.fixture(scope="module")
def receiver_mod() -> Iterator[RunningReceiver]:
    with RunningReceiver() as r:
        yield r


def tracer_run(args: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None,
               timeout: float = 60, clean: bool = True) -> subprocess.CompletedProcess:
    """``tracer-run ARGS``; its stderr is checked for internal errors and
    tracebacks unless ``clean=False`` (a test that provokes one on purpose)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    full["PYTHONPATH"] = REPO
    full.update({"TRACER_WRITER_INTERVAL": "0.1"})
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "tracer.run", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    if clean:
        assert_clean_output(proc.stderr)
    return proc


def _tree(receiver: RunningReceiver, service: str, n: int = 1) -> str:
    rows = receiver.wait_traces(n, timeout=10, service=service)
    return "\n".join(render_tree(receiver.spans(row["trace_id"]), ("component", "http.url", "http.status_code"))
                     for row in rows)


def test_python_script_is_traced_without_code_change(tmp_path: Path, receiver_mod: RunningReceiver) -> None:
    (tmp_path / "runapp.py").write_text(APP)
    proc = tracer_run(["python", "runapp.py"], env={"TRACER_AGENT_URL": receiver_mod.url}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "app done 200 ok" in proc.stdout
    tree = _tree(receiver_mod, "runapp")
    port_free = tree.replace(tree.split("127.0.0.1:")[1].split("/")[0], "PORT")
    assert port_free == (
        "app.work runapp 'job'\n"
        "  requests.request runapp 'GET /hello' component=requests "
        "http.url=http://127.0.0.1:PORT/hello?token=<redacted> http.status_code=200"
    )


def test_python_dash_m_package(tmp_path: Path, receiver_mod: RunningReceiver) -> None:
    pkg = tmp_path / "runpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(APP)
    proc = tracer_run(["python", "-m", "runpkg"], env={"TRACER_AGENT_URL": receiver_mod.url}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "requests.request runpkg 'GET /hello'" in _tree(receiver_mod, "runpkg")



def test_python_dash_m_module_service_is_the_package_in_info_and_in_traces(
        tmp_path: Path, receiver_mod: RunningReceiver) -> None:
    # One rule (tracer._service) for what --info announces and what the process stores.
    (tmp_path / "svcpkg" / "sub").mkdir(parents=True)
    job = "from tracer import tracer\nwith tracer.trace('job', resource=__spec__.name):\n    pass\n"
    for path in ("svcpkg/__init__.py", "svcpkg/sub/__init__.py"):
        (tmp_path / path).write_text("")
    for path in ("svcpkg/app.py", "svcpkg/sub/worker.py"):
        (tmp_path / path).write_text(job)
    env = {"TRACER_AGENT_URL": receiver_mod.url}
    for module in ("svcpkg.app", "svcpkg.sub.worker"):
        info = tracer_run(["--info", "python", "-m", module], env=env, cwd=tmp_path)
        assert "service:         svcpkg (derived from the command)" in info.stdout, info.stdout + info.stderr
        proc = tracer_run(["python", "-m", module], env=env, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = receiver_mod.wait_traces(2, service="svcpkg")
    assert sorted(row["resource"] for row in rows) == ["svcpkg.app", "svcpkg.sub.worker"]

def test_user_sitecustomize_still_runs(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE'] = 'ran'\n")
    (tmp_path / "check.py").write_text(textwrap.dedent("""
        import os, sys
        import requests
        from tracer import _patching
        print(os.environ.get("USER_SITECUSTOMIZE"), _patching.is_patched("requests"))
        print(sys.modules["sitecustomize"].__file__)
    """))
    env = {"PYTHONPATH": f"{user}{os.pathsep}{REPO}", "TRACER_AGENT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = tracer_run(["python", "check.py"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "ran True"
    assert second == str(user / "sitecustomize.py")


def test_a_failing_user_sitecustomize_is_reported_like_site_does(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("raise RuntimeError('user bug')\n")
    (tmp_path / "check.py").write_text("import requests\nfrom tracer import _patching\nprint(_patching.is_patched('requests'))\n")
    proc = tracer_run(["python", "check.py"], env={"PYTHONPATH": f"{user}{os.pathsep}{REPO}"}, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert "Error in sitecustomize" in proc.stderr and "user bug" in proc.stderr


def test_an_error_in_the_bootstrap_never_stops_the_app(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # A wrapt that cannot be imported: `import tracer` fails inside the bootstrap.
    (broken / "wrapt.py").write_text("raise ImportError('wrapt is broken here')\n")
    (tmp_path / "app.py").write_text("print('app ran')\n")
    # Only the command sees it (tracer-run itself needs a working wrapt).
    script = f'PYTHONPATH="$PYTHONPATH{os.pathsep}{broken}" exec "{sys.executable}" app.py'
    proc = tracer_run(["sh", "-c", script], cwd=tmp_path, clean=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "app ran"
    assert "bootstrap failed; the application runs untraced" in proc.stderr
    assert "wrapt is broken here" in proc.stderr


def test_debug_flag_logs_the_bootstrap(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import os\nprint(os.environ['TRACER_DEBUG'])\n")
    proc = tracer_run(["--debug", "python", "app.py"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "true"
    assert "tracer: bootstrap in pid" in proc.stderr


def test_disabled_tracer_runs_the_app_untraced(tmp_path: Path, receiver_mod: RunningReceiver) -> None:
    (tmp_path / "offapp.py").write_text(APP)
    env = {"TRACER_AGENT_URL": receiver_mod.url, "TRACER_ENABLED": "false"}
    proc = tracer_run(["python", "offapp.py"], env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "app done 200 ok" in proc.stdout, proc.stderr
    assert receiver_mod.traces(service="offapp") == []


def test_info_with_a_receiver(receiver_mod: RunningReceiver) -> None:
    proc = tracer_run(["--info", "python", "myapp.py"],
                      env={"TRACER_AGENT_URL": receiver_mod.url, "TRACER_ENV": "staging", "TRACER_PATCH_FLASK": "false",
                           "TRACER_SAMPLE_RATE": "0.5"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "service:         myapp (derived from the command)" in out
    assert "env:             staging" in out
    assert f"agent URL:       {receiver_mod.url}" in out
    assert "sample rate:     0.5" in out
    assert "span code:       C (tracer._cspan)" in out  # the test command builds it (tests/tracer/test_cspan.py)
    assert "encoder:         C (tracer._cencode)" in out
    requests_version = __import__("requests").__version__
    lines = {line.split()[0]: line.split() for line in out.split("integrations:\n")[1].splitlines()[1:8]}
    assert lines["requests"][:4] == ["requests", "yes", requests_version, "yes"]
    assert lines["flask"][1] == "no"
    assert lines["futures"][:3] == ["futures", "yes", "stdlib"]
    assert f"OK: a receiver answers at {receiver_mod.url}" in out


def test_info_says_when_the_pure_python_span_code_runs(receiver_mod: RunningReceiver) -> None:
    proc = tracer_run(["--info"], env={"TRACER_AGENT_URL": receiver_mod.url, "TRACER_PURE_PYTHON": "true"})
    assert "span code:       pure Python (TRACER_PURE_PYTHON is set)" in proc.stdout
    assert "encoder:         pure Python (TRACER_PURE_PYTHON is set)" in proc.stdout


def test_info_without_a_receiver_says_how_to_fix_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = tracer_run(["--info"], env={"TRACER_AGENT_URL": url})
    assert proc.returncode == 1
    assert (f"FAIL: no trace receiver at {url}: start one with `agent-sim serve`, or set TRACER_AGENT_URL"
            in proc.stdout)


@pytest.mark.parametrize("bad", ["http://127.0.0.1:notaport", "http://127.0.0.1:99999", "127.0.0.1:8126", "http://:80"])
def test_info_says_a_rejected_agent_url_and_fails(bad: str) -> None:
    proc = tracer_run(["--info"], env={"TRACER_AGENT_URL": bad})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"agent URL:       http://127.0.0.1:8126 (REJECTED TRACER_AGENT_URL={bad!r}: expected a URL like" in proc.stdout
    assert f"ERROR: TRACER_AGENT_URL={bad!r} was rejected; fix it or unset it" in proc.stdout
    assert proc.stderr.count(f"tracer: ignoring TRACER_AGENT_URL={bad!r}") == 1


def test_info_warns_when_tracing_is_disabled(receiver_mod: RunningReceiver) -> None:
    proc = tracer_run(["--info"], env={"TRACER_AGENT_URL": receiver_mod.url, "TRACER_ENABLED": "false"})
    assert "WARNING: tracing is disabled (TRACER_ENABLED=false)" in proc.stdout
    assert "tracing disabled" in proc.stdout


@pytest.mark.parametrize("args", [[], ["--debug"], ["--bogus", "python"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = tracer_run(args)
    assert proc.returncode == 2
    assert "usage: tracer-run [--info] [--debug] COMMAND [ARGS...]" in proc.stderr


def test_unknown_command_exits_127() -> None:
    proc = tracer_run(["no-such-command-xyz", "arg"])
    assert proc.returncode == 127
    assert "tracer-run: command not found: no-such-command-xyz" in proc.stderr


def test_exit_status_and_arguments_pass_through(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import sys\nprint(sys.argv[1:])\nsys.exit(3)\n")
    proc = tracer_run(["python", "app.py", "--info", "-x", "a b"], cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stdout.strip() == "['--info', '-x', 'a b']"


def test_child_env_puts_the_bootstrap_first() -> None:
    env = run.child_env({"PYTHONPATH": f"/a{os.pathsep}{run.BOOTSTRAP_DIR}"}, debug=True)
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0] == run.BOOTSTRAP_DIR and parts.count(run.BOOTSTRAP_DIR) == 1 and "/a" in parts
    assert env["TRACER_DEBUG"] == "true"
    assert os.listdir(run.BOOTSTRAP_DIR) in (["sitecustomize.py"], ["sitecustomize.py", "__pycache__"],
                                              ["__pycache__", "sitecustomize.py"])


def test_derived_service() -> None:
    assert run.derived_service(["python3", "-u", "app.py"]) == "app"
    assert run.derived_service(["python", "-m", "pkg.cli"]) == "pkg"
    assert run.derived_service(["gunicorn", "app:app"]) is None
    assert run.derived_service(["python", "-c", "pass"]) == "python"
    assert run.derived_service(["python", "-m", "flask", "run"]) == "python"
    assert run.derived_service(["python", "pkg/__main__.py"]) == "pkg"


def test_installed_console_script(receiver_mod: RunningReceiver) -> None:
    exe = require_program("tracer-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACER_")}
    env["TRACER_AGENT_URL"] = receiver_mod.url
    proc = subprocess.run([exe, "--info"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean_output(proc.stderr)
    assert "OK: a receiver answers" in proc.stdout


WSGI_APP = """
import os
from tracer import tracer

def app(environ, start_response):
    with tracer.trace("wsgi.request", resource=environ["PATH_INFO"]) as span:
        span.set_tag("worker.pid", str(os.getpid()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
"""


@pytest.mark.slow
@pytest.mark.parametrize("preload", [True, False])
def test_gunicorn_workers_trace_every_request_and_lose_none_at_exit(
    tmp_path: Path, receiver_mod: RunningReceiver, preload: bool
) -> None:
    import requests

    require_program("gunicorn")
    service = f"gunicorn-test-{'preload' if preload else 'lazy'}"
    (tmp_path / "wsgiapp.py").write_text(WSGI_APP)
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    full.update({"PYTHONPATH": REPO, "TRACER_AGENT_URL": receiver_mod.url, "TRACER_SERVICE": service,
                 "TRACER_WRITER_INTERVAL": "30"})  # nothing sent before exit: shutdown must flush
    cmd = [sys.executable, "-m", "tracer.run", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "wsgiapp:app"]
    if preload:
        cmd.insert(-1, "--preload")
    proc = subprocess.Popen(cmd, env=full, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from tests.utils import wait_for_port

        wait_for_port(port, timeout=20)
        pids = {requests.get(f"http://127.0.0.1:{port}/r{i}", timeout=5).text for i in range(20)}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert_clean_output(out)
    rows = receiver_mod.wait_traces(20, timeout=10, service=service)
    assert sorted(r["resource"] for r in rows) == sorted(f"/r{i}" for i in range(20))
    # Each request's trace carries the pid of the worker that answered it.
    assert {s["meta"]["worker.pid"] for r in rows for s in receiver_mod.spans(r["trace_id"])} == pids


def test_receiver_down_the_app_still_succeeds(tmp_path: Path) -> None:
    (tmp_path / "downapp.py").write_text(APP)
    env = {"TRACER_AGENT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = tracer_run(["python", "downapp.py"], env=env, cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "app done 200 ok" in proc.stdout


def test_interpreter_without_the_tracer_says_how_to_fix_it(tmp_path: Path) -> None:
    # A python whose venv lacks the tracer, as when tracer-run finds `python`
    # outside the activated venv: one clear line, and the app still runs.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    python = str(tmp_path / "venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "DD_"))}
    env["PYTHONPATH"] = os.path.join(REPO, "tracer", "bootstrap")
    proc = subprocess.run([python, "-c", "print('app ran')"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == "app ran\n", proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"tracer-run: {python} cannot import tracer")
    assert "activate the virtualenv" in line and "tracer-run .venv/bin/python" in line
