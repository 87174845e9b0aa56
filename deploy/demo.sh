#!/bin/sh
# `make demo`: start a shoal node on this host, deploy a replicated service
# of the echo image (built here: no registry needed) and show every replica
# answering. `make demo-down` (this script with "down") removes it all.
set -eu
cd "$(dirname "$0")/.."

DATA=/var/lib/shoal-demo
SOCK=/run/shoal/demo.sock
NS=shoal-demo
LOG=/var/log/shoal-demo.log
BIN=bin
export SHOAL_SOCKET=$SOCK

down() {
	if [ -f "$DATA/shoald.pid" ]; then
		for svc in $($BIN/shoalctl service ls -q 2>/dev/null); do
			$BIN/shoalctl service rm "$svc" >/dev/null 2>&1 || true
		done
		# Give the worker a moment to stop and remove the containers.
		i=0
		while [ "$i" -lt 100 ] && [ -n "$(ctr -n $NS containers ls -q 2>/dev/null)" ]; do
			sleep 0.1; i=$((i + 1))
		done
		kill "$(cat "$DATA/shoald.pid")" 2>/dev/null || true
		sleep 1
	fi
	$BIN/shoal-testimage purge $NS
	rm -rf "$DATA" "$SOCK"
	echo "demo removed"
}

if [ "${1:-}" = down ]; then
	down
	exit 0
fi

if [ -f "$DATA/shoald.pid" ] && kill -0 "$(cat "$DATA/shoald.pid")" 2>/dev/null; then
	echo "a demo is running already; removing it first"
	down
fi
rm -rf "$DATA"
mkdir -p "$DATA"

echo "==> building the echo image (a static Go HTTP/TCP/UDP server) and loading it into containerd"
$BIN/shoal-testimage build -o "$DATA/echo.tar"
$BIN/shoal-testimage import --namespace $NS "$DATA/echo.tar"

echo "==> shoald init (log: $LOG)"
setsid $BIN/shoald init --data-dir "$DATA" --socket "$SOCK" --containerd-namespace $NS --listen-addr 127.0.0.1:4242 >"$LOG" 2>&1 </dev/null &
echo $! >"$DATA/shoald.pid"
i=0
until $BIN/shoalctl node ls >/dev/null 2>&1; do
	i=$((i + 1))
	if [ "$i" -gt 300 ]; then
		echo "shoald did not start; see $LOG" >&2
		exit 1
	fi
	sleep 0.1
done

echo "==> shoalctl node ls"
$BIN/shoalctl node ls
echo
echo "==> shoalctl service create --name web --replicas 3 --env GREETING=hello shoal.test/echo:latest"
$BIN/shoalctl service create --name web --replicas 3 --env GREETING=hello shoal.test/echo:latest
echo
echo "==> shoalctl service ps web"
$BIN/shoalctl service ps web
echo
echo "==> every replica answers (HTTP GET inside each task's network namespace)"
for pid in $(ctr -n $NS tasks ls 2>/dev/null | awk 'NR>1 && $3=="RUNNING" {print $2}'); do
	nsenter -t "$pid" -n $BIN/shoal-testimage get http://127.0.0.1:80/ | grep -E '^(hostname|task|env GREETING)='
	echo
done
cat <<EOT
The demo cluster keeps running. Try:
  export SHOAL_SOCKET=$SOCK
  $BIN/shoalctl service scale web=5
  $BIN/shoalctl service ps web
Remove it with: make demo-down
EOT
