#!/usr/bin/env bash
# `make run PORT=...`: the whole stack on http://127.0.0.1:PORT/ until Ctrl-C or TERM.
#
# fcgiserver hosts the upload service on a unix socket under var/run (with a pidfile);
# lighttpd (conf/lighttpd.conf) listens on the port, serves pictures, thumbnails and page
# assets from disk and passes everything else to the socket. Stopping either stops both,
# and the script returns only after both are gone.
#
# FCGISERVER_VAR moves the state folder (default ./var); FCGISERVER_WORKERS sets the
# number of workers (default 2).
set -euo pipefail

PORT="${1:-8080}"
case "$PORT" in
    '' | *[!0-9]*) echo "run-stack: PORT must be a number, got '$PORT'" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="$ROOT/.venv/bin/python"
VAR="$(mkdir -p "${FCGISERVER_VAR:-var}" && cd "${FCGISERVER_VAR:-var}" && pwd)"
WORKERS="${FCGISERVER_WORKERS:-2}"

LIGHTTPD="$(command -v lighttpd || echo /usr/sbin/lighttpd)"
[ -x "$PY" ] || { echo "run-stack: $PY is missing; run 'make setup'" >&2; exit 1; }
[ -x "$LIGHTTPD" ] || { echo "run-stack: lighttpd is missing; run 'make system-deps'" >&2; exit 1; }

# Files named after the port, so two stacks on two ports can share one state folder.
mkdir -p "$VAR/run" "$VAR/log" "$VAR/tmp/uploads" "$VAR/media/pictures" "$VAR/media/large" "$VAR/media/thumbs"
SOCK="$VAR/run/fcgiserver-$PORT.sock"
if [ "${#SOCK}" -gt 100 ]; then
    # A unix socket path has room for 107 bytes; a deep checkout would not fit.
    SOCK_DIR="$(mktemp -d /tmp/fcgiserver-run.XXXXXX)"
    SOCK="$SOCK_DIR/fcgiserver.sock"
fi
FCGI_PIDFILE="$VAR/run/fcgiserver-$PORT.pid"

export UPLOAD_ROOT="$VAR/media"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

FCGI_PID=""
LIGHTTPD_PID=""

stop_all() {
    trap - INT TERM EXIT
    # The front first, so no new request reaches a backend that is going away.
    for pid in $LIGHTTPD_PID $FCGI_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $LIGHTTPD_PID $FCGI_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${SOCK_DIR:-}" ]; then
        rm -rf "$SOCK_DIR"
    fi
}
on_signal() {
    echo
    echo "run-stack: stopping"
    stop_all
    exit 0
}
trap on_signal INT TERM
trap stop_all EXIT

"$PY" -m fcgiserver --bind "unix:$SOCK" --workers "$WORKERS" --pidfile "$FCGI_PIDFILE" \
    --status-path /fcgiserver-status --ping-path /fcgiserver-ping \
    --hooks handlers.upload handlers.upload:application &
FCGI_PID=$!

# lighttpd connects to the socket only when a request comes, but a backend that fails to
# start should stop us here with its own message, not later with a 503. Ready means a worker
# answers FCGI_GET_VALUES: a socket file (left by a killed server, say) proves nothing.
answers() {
    [ -S "$SOCK" ] && "$PY" -m fcgiserver.client "unix:$SOCK" --get-values -m 1 >/dev/null 2>&1
}
ready=""
for _ in $(seq 150); do
    if answers; then
        ready=1
        break
    fi
    if ! kill -0 "$FCGI_PID" 2>/dev/null; then
        echo "run-stack: fcgiserver did not start (see above)" >&2
        exit 1
    fi
    sleep 0.2
done
[ -n "$ready" ] || { echo "run-stack: fcgiserver does not answer on $SOCK" >&2; exit 1; }

export FCGISERVER_HOST=127.0.0.1
export FCGISERVER_PORT="$PORT"
export FCGISERVER_SOCKET="$SOCK"
export FCGISERVER_STATIC="$ROOT/handlers/static"
export FCGISERVER_LOG_DIR="$VAR/log"
export FCGISERVER_LIGHTTPD_PID="$VAR/run/lighttpd-$PORT.pid"
export FCGISERVER_UPLOAD_TMP="$VAR/tmp/uploads"

"$LIGHTTPD" -tt -f "$ROOT/conf/lighttpd.conf"
"$LIGHTTPD" -D -f "$ROOT/conf/lighttpd.conf" </dev/null &
LIGHTTPD_PID=$!

for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$LIGHTTPD_PID" 2>/dev/null; then
        echo "run-stack: lighttpd did not start; see $VAR/log/error.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "fcgiserver stack running on http://127.0.0.1:$PORT/  (Ctrl-C stops it)"
echo "  backend: $SOCK (pid $FCGI_PID), logs: $VAR/log/"

# Returns when either process ends (or at once, through the trap, on INT/TERM).
set +e
wait -n "$FCGI_PID" "$LIGHTTPD_PID"
status=$?
set -e
echo "run-stack: a process of the stack exited (status $status); stopping the other" >&2
exit 1
