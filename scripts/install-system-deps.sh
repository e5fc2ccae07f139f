#!/usr/bin/env bash
# Installs the Debian packages the tests, `make run` and `make bench` drive as real processes.
# Only missing ones are installed; the package index is refreshed first because a fresh
# machine may have none.
set -euo pipefail

declare -A need=(
    [lighttpd]=lighttpd
    [nginx]=nginx
    [cgi-fcgi]=libfcgi-bin
    [wrk]=wrk
    [chromium]=chromium
    [chromedriver]=chromium-driver
    [systemd-analyze]=systemd
    [gcc]=gcc
    [valgrind]=valgrind
)

missing=()
for cmd in "${!need[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        missing+=("${need[$cmd]}")
    fi
done

# The compiled protocol accelerator builds against the headers of the Python that makes the
# venv (PYTHON, as the Makefile passes it).
include_dir=$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
if [ ! -f "$include_dir/Python.h" ]; then
    missing+=(python3-dev)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
# The daemons are only started by the tests and `make run`, on ports of their own: keep the
# packages from starting system-wide services (lighttpd and nginx would both want port 80,
# and the second one's failed start would fail the install).
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    added_policy=1
fi
cleanup() {
    if [ -n "$added_policy" ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
