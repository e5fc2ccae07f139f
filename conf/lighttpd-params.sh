#!/bin/sh
# Prints the site parameters of lighttpd.conf as lighttpd `var.` lines.
#
# lighttpd stops on an unset `env.NAME`, so the defaults (those of a real install under
# /etc/lighttpd with the systemd units in this folder) live here and any FCGISERVER_* or
# UPLOAD_ROOT variable in lighttpd's environment replaces one. `make run` and the tests use
# that to point the very same lighttpd.conf at a scratch directory and a free port.
set -eu

emit_str() {
    # A double quote or backslash would end the lighttpd string early: refuse it loudly
    # rather than let lighttpd run with half a path.
    case "$2" in
        *'"'* | *'\'*)
            echo "lighttpd-params.sh: $1 must not contain a quote or backslash: $2" >&2
            exit 1
            ;;
    esac
    printf 'var.%s = "%s"\n' "$1" "$2"
}

emit_int() {
    case "$2" in
        '' | *[!0-9]*)
            echo "lighttpd-params.sh: $1 must be a number: $2" >&2
            exit 1
            ;;
    esac
    printf 'var.%s = %s\n' "$1" "$2"
}

emit_str fcgi_host "${FCGISERVER_HOST:-0.0.0.0}"
emit_int fcgi_port "${FCGISERVER_PORT:-80}"
# The backend's listening socket (fcgiserver.socket creates it under systemd).
emit_str fcgi_socket "${FCGISERVER_SOCKET:-/run/fcgiserver/fcgiserver.sock}"
# The upload service's storage root: pictures/, thumbs/ and large/ below it.
emit_str media_root "${UPLOAD_ROOT:-/var/lib/fcgiserver/media}"
# The page assets shipped with the upload service (handlers/static).
emit_str static_root "${FCGISERVER_STATIC:-/opt/fcgiserver/handlers/static}"
emit_str log_dir "${FCGISERVER_LOG_DIR:-/var/log/lighttpd}"
emit_str pid_file "${FCGISERVER_LIGHTTPD_PID:-/run/lighttpd.pid}"
# Request bodies are buffered here before the backend sees a byte; it must hold a few
# uploads of the largest allowed size at once.
emit_str upload_tmp "${FCGISERVER_UPLOAD_TMP:-/var/cache/lighttpd/uploads}"
# Used only by lighttpd-binpath.conf, where lighttpd starts the backend itself.
emit_str fcgi_python "${FCGISERVER_PYTHON:-/opt/fcgiserver/.venv/bin/python}"
emit_int fcgi_workers "${FCGISERVER_WORKERS:-4}"
emit_str fcgi_app "${FCGISERVER_APP:-handlers.upload:application}"
