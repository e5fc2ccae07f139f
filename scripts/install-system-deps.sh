#!/usr/bin/env bash
# Installs the Debian packages that `make run` or `make test` drive as real processes:
#
#   install-system-deps.sh run    what the stack needs to run: lighttpd
#   install-system-deps.sh test   what the tests (and `make bench`) start: every front they
#                                 compare (lighttpd, nginx, Apache, HAProxy, Caddy), cgi-fcgi,
#                                 wrk, a headless browser, systemd's tools and exiftool
#
# Only missing ones are installed; the package index is refreshed first because a fresh
# machine may have none.
set -euo pipefail

SET="${1:-test}"

# command -> Debian package
# gcc: the compiled protocol accelerator builds when the venv installs (python3-dev below).
declare -A need=([lighttpd]=lighttpd [gcc]=gcc)
case "$SET" in
    run) ;;
    test)
        need+=(
            [nginx]=nginx
            [apache2]=apache2
            [haproxy]=haproxy
            [caddy]=caddy
            [cgi-fcgi]=libfcgi-bin
            [wrk]=wrk
            [chromium]=chromium
            [chromedriver]=chromium-driver
            [systemd-analyze]=systemd
            [exiftool]=libimage-exiftool-perl
            [valgrind]=valgrind
        )
        ;;
    *)
        echo "install-system-deps: unknown set '$SET' (run or test)" >&2
        exit 2
        ;;
esac

missing=()
for cmd in "${!need[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        missing+=("${need[$cmd]}")
    fi
done

# Libraries, not commands: the upload service decodes JPEGs with libjpeg-turbo's TurboJPEG API.
if ! ldconfig -p | grep -q 'libturbojpeg\.so\.0 '; then
    missing+=(libturbojpeg0)
fi

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
# packages from starting system-wide services (lighttpd, nginx, Apache, HAProxy and Caddy
# would all want port 80, and the second one's failed start would fail the install).
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
