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

# Other Pythons. Every CPython >= 3.10 found on this machine (pyenv's
# versions, python3.1x on PATH) runs tests/tracer and tests/contrib twice: with
# the C code built for that version and with TRACER_PURE_PYTHON=true (the
# default version runs the whole suite with the C code, then this pure-Python
# pass). Each other version has its own .venv-<x.y>, installed again only when
# pyproject.toml changes; its C extensions are rebuilt in place. To fit the time
# budget on a 2-core machine the venvs are prepared in the background while the
# default version's pure-Python pass runs, and each version's two passes run
# side by side (the tests mostly wait on servers and subprocesses); their
# outputs are printed one after the other. Both passes leave out
# test_encoding_threads.py (45-90 s under -X dev and PYTHONMALLOC=debug; the
# default version runs it, and test_stress.py covers the same races on each
# version in ~1 s).
PASS_PATHS=(tests/tracer tests/contrib)
SELF_VER=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')  # the default version
WORK=.ci-work  # the side-by-side passes' outputs and the venvs' build logs
rm -rf "$WORK" && mkdir -p "$WORK"
OTHER_SKIP=(--deselect tests/tracer/test_encoding_threads.py)

# Prints "version python" for each other CPython >= 3.10, one per line.
find_other_pythons() {
  local py ver seen=" $SELF_VER "
  for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[0-9]*/bin/python \
    $(compgen -c python3.1 | grep -xE 'python3\.1[0-9]+' | sort -u); do
    py=$(command -v "$py" 2>/dev/null) || continue
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) else None' 2>/dev/null) || continue
    case "$ver" in None | "" | *" "*) continue ;; esac
    case "$seen" in *" $ver "*) continue ;; esac
    seen="$seen$ver "
    echo "$ver $py"
  done
}

# prepare_venv VERSION PYTHON: .venv-VERSION with the package, its mysql and
# test extras, and the C extensions built in place for that version. Output
# goes to $WORK/venv-VERSION.log.
prepare_venv() {
  local ver=$1 py=$2 venv=".venv-$1" stamp
  stamp=".installed-$(cksum < pyproject.toml | cut -d' ' -f1)"
  {
    if [ ! -e "$venv/$stamp" ]; then
      rm -rf "$venv" && "$py" -m venv "$venv" \
        && "$venv/bin/python" -m pip install -q --disable-pip-version-check setuptools -e '.[agent,mysql,test]' \
        && touch "$venv/$stamp"
    fi && "$venv/bin/python" setup.py -q build_ext --inplace
  } >"$WORK/venv-$ver.log" 2>&1
}

# two_passes LABEL BIN_DIR [pytest args...]: the C pass and the pure-Python
# pass of PASS_PATHS side by side with BIN_DIR first on PATH (the tests run its
# console scripts: gunicorn, tracer-run); prints both outputs; fails if either
# fails.
two_passes() {
  local label=$1 bin=$2 rc_c=0 rc_p=0 pid_c pid_p
  shift 2
  PATH="$bin:$PATH" python -m pytest -p no:cacheprovider -q "${PASS_PATHS[@]}" "$@" >"$WORK/$label-c.log" 2>&1 &
  pid_c=$!
  PATH="$bin:$PATH" TRACER_PURE_PYTHON=true python -m pytest -p no:cacheprovider -q "${PASS_PATHS[@]}" "$@" >"$WORK/$label-pure.log" 2>&1 &
  pid_p=$!
  wait "$pid_c" || rc_c=$?
  wait "$pid_p" || rc_p=$?
  log "Python $label, C code: ${PASS_PATHS[*]}"; cat "$WORK/$label-c.log"
  log "Python $label, TRACER_PURE_PYTHON=true: ${PASS_PATHS[*]}"; cat "$WORK/$label-pure.log"
  [ "$rc_c" -eq 0 ] && [ "$rc_p" -eq 0 ]
}

# other_pythons PREP_PID VERSIONS...: waits for the background venv
# preparation, then runs each version's two passes. Sets `status`.
other_pythons() {
  local prep_pid=$1 entry ver started ran=() failed=()
  shift
  wait "$prep_pid" || true
  for entry in "$@"; do
    ver=${entry%% *}
    started=$SECONDS
    if [ ! -e "$WORK/venv-$ver.ready" ]; then
      log "Python $ver: preparing .venv-$ver failed"; cat "$WORK/venv-$ver.log"
      failed+=("$ver (venv)"); status=1; continue
    fi
    if two_passes "$ver" "$PWD/.venv-$ver/bin" "${OTHER_SKIP[@]}"; then
      ran+=("$ver ($((SECONDS - started))s)")
    else
      failed+=("$ver ($((SECONDS - started))s)")
      status=1
    fi
  done
  log "other Pythons: passed: ${ran[*]:-none}; failed: ${failed[*]:-none} (the whole suite ran on $SELF_VER)"
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
  others=()
  if [ "${OTHER_PYTHONS:-1}" != "0" ]; then  # on by default; OTHER_PYTHONS=0 skips them
    mapfile -t others < <(find_other_pythons)
  fi
  # The venvs of the other versions are prepared in the background (one at a
  # time) while this version's pure-Python pass runs.
  (
    for entry in "${others[@]}"; do
      if prepare_venv "${entry%% *}" "${entry#* }"; then touch "$WORK/venv-${entry%% *}.ready"; fi
    done
  ) &
  prep_pid=$!
  # The span hot path runs in C (tracer._cspan) where it builds, else in pure
  # Python: the core's and the integrations' tests once more with the
  # pure-Python code.
  log "pytest ${PASS_PATHS[*]} with TRACER_PURE_PYTHON=true"
  TRACER_PURE_PYTHON=true python -m pytest -p no:cacheprovider -q "${PASS_PATHS[@]}" || status=$?
  if [ ${#others[@]} -gt 0 ]; then
    other_pythons "$prep_pid" "${others[@]}"
  else
    wait "$prep_pid" || true
    log "no other CPython >= 3.10 on this machine (or OTHER_PYTHONS=0): only $SELF_VER tested"
  fi
fi
exit "$status"
