#!/usr/bin/env bash
# The README's two commands:  ./dev.sh up   (run the service)   ./dev.sh test   (run the tests)
# Both create .venv with Python 3.11+, install taskkernel and its test tools into it (once, and
# again whenever pyproject.toml changes), then run. Redis is Debian's redis-server (7.0, security
# fixes backported), run privately by taskkernel; when it (or bubblewrap / slirp4netns, for the
# engine sandbox) is missing and this runs as root with apt-get, one apt-get step installs them,
# without leaving the packaged system Redis running. Without root, install them yourself:
#   sudo apt-get install redis-server bubblewrap slirp4netns   (and python3-venv if venv fails)
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
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[server,test]'
    touch "$STAMP"
  fi
}

# The Debian packages taskkernel runs: redis-server (the private Redis of `up` and the tests),
# bubblewrap and slirp4netns (the engine sandbox). Installed in one apt step when missing.
ensure_system_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)  # the tests' network namespaces (outbound engines)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]}: install them (sudo apt-get install ${missing[*]})" >&2
    return 0  # `up` with TASKKERNEL_REDIS_URL needs none of them; what does says so itself
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  # policy-rc.d answering 101 ("action forbidden") keeps invoke-rc.d and deb-systemd-invoke
  # from starting the packaged redis-server on port 6379: taskkernel runs its own.
  local policy=/usr/sbin/policy-rc.d placed=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed=1
  fi
  local status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null; } || status=$?
  if [ -n "$placed" ]; then rm -f "$policy"; fi
  if [ "$status" != 0 ]; then
    echo "apt-get could not install ${missing[*]}" >&2
    exit "$status"
  fi
  # Should the Redis just installed have started anyway (policy-rc.d not honoured), stop it and
  # keep it off; a redis-server that was already installed is not ours to touch
  case " ${missing[*]} " in *" redis-server "*) ;; *) return 0 ;; esac
  if [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  elif [ -s /run/redis/redis-server.pid ]; then
    service redis-server stop >/dev/null 2>&1 || kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
  fi
}

command=${1:-}
shift || true
case "$command" in
  up)    ensure_system_packages; ensure_venv; exec "$VENV/bin/taskkernel" up "$@" ;;
  test)  ensure_system_packages; ensure_venv
         # tests/test_web_console.py drives Debian's headless Chromium (and skips, saying so, without it)
         if { ! command -v chromium || ! command -v chromedriver; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
           echo "installing chromium and chromium-driver with apt-get (for the web console's browser test)" >&2
           { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
               >/dev/null; } || echo "could not install chromium: the browser test will be skipped" >&2
         fi
         # the suite starts hundreds of Python processes (and each xdist worker collects every
         # module): with bytecode written once they need not compile taskkernel and the tests again
         unset PYTHONDONTWRITEBYTECODE
         exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) ensure_system_packages; ensure_venv
         if [ ! -f "$VENV/.installed-bench" ] || [ pyproject.toml -nt "$VENV/.installed-bench" ]; then
           "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[server,test,bench]'
           touch "$VENV/.installed-bench"
         fi
         exec "$VENV/bin/python" -m bench "$@" ;;
  *)     echo "usage: ./dev.sh up|test|bench [args...]" >&2; exit 2 ;;
esac
