#!/bin/sh
# The berth-test/web server. Environment:
#   PORT        port to listen on inside the container (default 8080)
#   VERSION     what GET /version answers (the image sets 1 or 2)
#   HEALTHY     0: no /healthz file, so GET /healthz answers 404 (default 1)
#   SLOW_START  seconds to wait before serving anything (default 0)
#   STOP_DELAY  seconds to keep serving after SIGTERM, with /healthz gone (default 0)
#   ERROR_EVERY N: 1 in N requests to /cgi-bin/api (at random) answers 500 (default 0: none), while its
#               health stays good, as a release with a bug in one code path would
#   DELAY_MS    milliseconds /cgi-bin/api waits before answering (default 0), its health still
#               instant, as a release with a slower code path would
# Paths: /  (index.html)  /healthz  /version  /hostname
#        /cgi-bin/slow?N  answers "slow VERSION" after N seconds (default 2): a request in flight
#        /cgi-bin/api     answers "api VERSION", or 500 as ERROR_EVERY says, after DELAY_MS
# At runtime `rm /www/healthz` (docker exec) makes a running container unhealthy.
port=${PORT:-8080}
pid=

stop() {
	rm -f /www/healthz
	if [ "${STOP_DELAY:-0}" -gt 0 ]; then
		sleep "$STOP_DELAY"
	fi
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
	fi
	exit 0
}
trap stop TERM INT

mkdir -p /www
printf '%s\n' "${VERSION:-}" >/www/version
hostname >/www/hostname
printf '<!doctype html>\n<title>berth-test/web</title>\n<p>berth-test/web version %s on %s</p>\n' \
	"${VERSION:-}" "$(hostname)" >/www/index.html
mkdir -p /www/cgi-bin
# The version is written in: httpd runs CGI scripts with only the CGI variables.
printf '#!/bin/sh\nsleep "${QUERY_STRING:-2}"\nprintf "Content-Type: text/plain\\r\\n\\r\\nslow %s\\n"\n' "${VERSION:-}" >/www/cgi-bin/slow
chmod 0755 /www/cgi-bin/slow
# /cgi-bin/api: httpd sends "200 OK" before a CGI's output unless it starts with a status line.
# DELAY_MS is written in as a usleep (microseconds), or nothing.
delay=
if [ "${DELAY_MS:-0}" -gt 0 ]; then
	delay="usleep $((DELAY_MS * 1000))"
fi
cat >/www/cgi-bin/api <<EOF
#!/bin/sh
$delay
# At random (not by a counter, which requests at once would share): 1 in ERROR_EVERY.
n=\$(od -An -N2 -tu2 /dev/urandom)
if [ "${ERROR_EVERY:-0}" -gt 0 ] && [ \$((n % ${ERROR_EVERY:-1})) -eq 0 ]; then
	printf "HTTP/1.1 500 Internal Server Error\\\\r\\\\nContent-Type: text/plain\\\\r\\\\n\\\\r\\\\nerror %s\\\\n" "${VERSION:-}"
else
	printf "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\napi %s\\\\n" "${VERSION:-}"
fi
EOF
chmod 0755 /www/cgi-bin/api
if [ "${HEALTHY:-1}" = 0 ]; then
	rm -f /www/healthz
else
	echo ok >/www/healthz
fi

if [ "${SLOW_START:-0}" -gt 0 ]; then
	# In the background so that SIGTERM is handled at once.
	sleep "$SLOW_START" &
	wait $!
fi

httpd -f -p "$port" -h /www &
pid=$!
wait "$pid"
