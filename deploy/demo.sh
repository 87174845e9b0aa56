#!/bin/sh
# `make demo`: a local three-node cluster (one manager, two workers, each in
# its own network namespace: `shoalctl lab`), a replicated service of the
# echo image (built here: no registry needed), and every replica answering.
# `make demo-down` (this script with "down") removes it all.
set -eu
cd "$(dirname "$0")/.."

BIN=bin
OUT=out
CTL="$BIN/shoalctl"

if [ "${1:-}" = down ]; then
	$CTL lab down
	exit 0
fi

mkdir -p $OUT
if $CTL lab status >/dev/null 2>&1; then
	echo "==> a lab is up already: removing it first"
	$CTL lab down
fi

echo "==> building the echo image (a static Go HTTP/TCP/UDP server)"
$BIN/shoal-testimage build -o $OUT/echo.tar

echo "==> shoalctl lab up --managers 1 --workers 2"
$CTL lab up --managers 1 --workers 2 --image $OUT/echo.tar

echo
echo "==> shoalctl node ls"
$CTL node ls
echo
echo "==> shoalctl service create --name web --replicas 3 --env GREETING=hello shoal.test/echo:latest"
$CTL service create --name web --replicas 3 --env GREETING=hello shoal.test/echo:latest
echo
echo "==> shoalctl service ps web"
$CTL service ps web
echo
echo "==> every replica answers, wherever it runs (HTTP GET inside each task's network namespace)"
for ns in $(ctr namespaces ls -q | grep '^shoal-lab-'); do
	for pid in $(ctr -n "$ns" tasks ls 2>/dev/null | awk 'NR>1 && $3=="RUNNING" {print $2}'); do
		echo "-- on ${ns#shoal-lab-}:"
		nsenter -t "$pid" -n $BIN/shoal-testimage get http://127.0.0.1:80/ | grep -E '^(hostname|task|env GREETING)='
	done
done
cat <<EOT

The demo cluster keeps running; plain shoalctl talks to it. Try:
  $CTL service scale web=6
  $CTL node update --availability drain worker1
  $CTL service ps web
  $CTL lab status
Remove it with: make demo-down
EOT
