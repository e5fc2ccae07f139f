#!/bin/sh
# Prints the scale-out parameters of lighttpd-scaleout.conf: the app hosts and the S3 store.
#   FCGISERVER_BACKENDS  "HOST:PORT HOST:PORT ..."  the fcgiserver hosts (--bind tcp:HOST:PORT)
#   UPLOAD_STORE_HOST, UPLOAD_STORE_PORT, UPLOAD_STORE_BUCKET   the S3 store (path-style)
# Give each backend its own IP: lighttpd's balancers key on the address.
set -eu
backends="${FCGISERVER_BACKENDS:-127.0.0.2:9000 127.0.0.3:9000 127.0.0.4:9000}"
for name in UPLOAD_STORE_HOST UPLOAD_STORE_BUCKET; do
    eval "value=\${$name:-}"
    case "$value" in
        '' | *'"'* | *'\'* | *' '*) echo "lighttpd-scaleout-params.sh: bad or missing $name" >&2; exit 1 ;;
    esac
done
case "${UPLOAD_STORE_PORT:-}" in
    '' | *[!0-9]*) echo "lighttpd-scaleout-params.sh: UPLOAD_STORE_PORT must be a number" >&2; exit 1 ;;
esac
printf 'var.store_host = "%s"\nvar.store_port = %s\nvar.store_pictures = "/%s/pictures/"\n' \
    "$UPLOAD_STORE_HOST" "$UPLOAD_STORE_PORT" "$UPLOAD_STORE_BUCKET"
printf 'var.store_thumbs = "/%s/thumbs/"\nvar.store_large = "/%s/large/"\n' \
    "$UPLOAD_STORE_BUCKET" "$UPLOAD_STORE_BUCKET"
printf 'var.fcgi_backends = ('
n=0
for hp in $backends; do
    host="${hp%:*}"
    port="${hp##*:}"
    case "$port" in '' | *[!0-9]*) echo "lighttpd-scaleout-params.sh: bad backend $hp" >&2; exit 1 ;; esac
    n=$((n + 1))
    printf '"app%s" => ("host" => "%s", "port" => %s, "check-local" => "disable", "fix-root-scriptname" => "enable"), ' \
        "$n" "$host" "$port"
done
printf ')\n'
