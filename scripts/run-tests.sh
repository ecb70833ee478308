#!/usr/bin/env bash
# Runs the whole test suite on a fresh Linux (Debian/Ubuntu) machine: installs the
# real parts the tests use (MariaDB, Chromium, build deps for mysqlclient) with
# apt-get when missing, the package and its test extras in a virtual environment
# (.venv, unless one is active), Datadog's test agent in its own venv, then pytest.
# Extra arguments go to pytest (e.g. `bash scripts/run-tests.sh tests/tracer -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
dpkg -s libmariadb-dev >/dev/null 2>&1 || missing+=(libmariadb-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # promtool: the monitors' reference check
# Python headers: tracer._cspan (the C span code) and mysqlclient compile against them.
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
log "pip install -e '.[agent,mysql,test]' into $(dirname "$(dirname "$(command -v python)")")"
python -m pip install -q --disable-pip-version-check -e '.[agent,mysql,test]'

if [ ! -x .venv-testagent/bin/ddapm-test-agent ]; then
  log "installing ddapm-test-agent into .venv-testagent"
  python3 -m venv .venv-testagent
  .venv-testagent/bin/pip install -q --disable-pip-version-check ddapm-test-agent
fi

export DDAPM_TEST_AGENT="$PWD/.venv-testagent/bin/ddapm-test-agent"
export MARIADBD="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
export CHROMIUM="$(command -v chromium)"
export PROMTOOL="$(command -v promtool)"

# Other Pythons: tests/tracer with the C code (built for that version) and
# again with TRACER_PURE_PYTHON=true, on every other CPython >= 3.10 found on
# this machine (pyenv's versions, python3.1x on PATH); tests/contrib and the
# rest run on the default one only. Each version has its own .venv-<x.y>,
# installed again only when pyproject.toml changes; the C extensions are
# rebuilt in place when their sources change. Both passes leave out
# test_encoding_threads.py (45-90 s under -X dev and PYTHONMALLOC=debug; the
# default version runs it, and test_stress.py covers the same races on each
# version in ~1 s). Sets `status`.
other_pythons() {
  local self_ver py ver seen venv stamp ran=() failed=() started skip=(--deselect tests/tracer/test_encoding_threads.py)
  self_ver=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  seen=" $self_ver "
  stamp=".installed-$(cksum < pyproject.toml | cut -d' ' -f1)"
  for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[0-9]*/bin/python \
    $(compgen -c python3.1 | grep -xE 'python3\.1[0-9]+' | sort -u); do
    py=$(command -v "$py" 2>/dev/null) || continue
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) else None' 2>/dev/null) || continue
    case "$ver" in None | "" | *" "*) continue ;; esac
    case "$seen" in *" $ver "*) continue ;; esac
    seen="$seen$ver "
    started=$SECONDS
    venv=".venv-$ver"
    log "Python $ver ($py): $venv, tests/tracer, C and pure Python"
    # The venv's bin first: tests run its console scripts (gunicorn, tracer-run).
    if { [ -e "$venv/$stamp" ] || { rm -rf "$venv" && "$py" -m venv "$venv" \
          && "$venv/bin/python" -m pip install -q --disable-pip-version-check setuptools -e '.[agent,test]' \
          && touch "$venv/$stamp"; }; } \
      && { "$venv/bin/python" setup.py -q build_ext --inplace >"$venv/build.log" 2>&1 || { cat "$venv/build.log"; false; }; } \
      && PATH="$PWD/$venv/bin:$PATH" python -m pytest -p no:cacheprovider -q tests/tracer "${skip[@]}" \
      && PATH="$PWD/$venv/bin:$PATH" TRACER_PURE_PYTHON=true python -m pytest -p no:cacheprovider -q tests/tracer "${skip[@]}"; then
      ran+=("$ver ($((SECONDS - started))s)")
    else
      failed+=("$ver ($((SECONDS - started))s)")
      status=1
    fi
  done
  if [ ${#ran[@]} -eq 0 ] && [ ${#failed[@]} -eq 0 ]; then
    log "only Python $self_ver on this machine: no other version to test"
    return
  fi
  log "other Pythons: passed: ${ran[*]:-none}; failed: ${failed[*]:-none} (the whole suite ran on $self_ver)"
}

log "ruff, mypy"
python -m ruff check tracer contrib agent_sim sql_obfuscation tests benchmarks examples
python -m mypy

# A real part missing fails the run (tests/utils.py missing()); ALLOW_SKIPS=1
# turns that into skips for a partial local run.
if [ "${ALLOW_SKIPS:-}" != 1 ]; then export TESTS_REQUIRE_REAL_PARTS=1; fi

log "pytest"
set +e
python -m pytest -p no:cacheprovider --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"; exit 1
fi
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  # The span hot path runs in C (tracer._cspan) where it builds, else in pure
  # Python: the core's tests once more with the pure-Python code.
  log "pytest tests/tracer with TRACER_PURE_PYTHON=true"
  TRACER_PURE_PYTHON=true python -m pytest -p no:cacheprovider -q tests/tracer || status=$?
fi
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  # On by default; OTHER_PYTHONS=0 skips them.
  if [ "${OTHER_PYTHONS:-1}" != "0" ]; then
    other_pythons
  else
    log "other CPython versions not run (OTHER_PYTHONS=0)"
  fi
fi
exit "$status"
