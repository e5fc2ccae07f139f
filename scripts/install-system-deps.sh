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
)

missing=()
for cmd in "${!need[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        missing+=("${need[$cmd]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
