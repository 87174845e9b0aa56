#!/bin/sh
# `make demo`: a local three-node cluster (one manager, two workers, each in
# its own network namespace: `shoalctl lab`), a replicated service of the
# echo image (built here: no registry needed) published on port 8080 through
# the routing mesh, and every node answering on it.
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
echo "==> shoalctl service create --name web --replicas 2 --publish 8080:80 --env GREETING=hello shoal.test/echo:latest"
$CTL service create --name web --replicas 2 --publish 8080:80 --env GREETING=hello shoal.test/echo:latest
echo
echo "==> shoalctl service ps web"
$CTL service ps web
echo
echo "==> port 8080 answers on every node, also the one without a replica (routing mesh)"
# This host is on the lab's bridge, so it reaches every node's address
# like a client on the network would.
for addr in $($CTL lab status --format json | sed -n 's/.*"address": *"\([0-9.]*\)".*/\1/p'); do
	for i in 1 2 3; do
		printf '%s:8080 -> ' "$addr"
		$BIN/shoal-testimage get "http://$addr:8080/" | sed -n 's/^task=//p'
	done
done
cat <<EOT

The demo cluster keeps running; plain shoalctl talks to it. Try:
  $CTL service scale web=6
  $BIN/shoal-testimage load -n 200 http://10.213.0.3:8080
  $CTL node update --availability drain worker1
  $CTL service ps web
  $CTL lab status
Remove it with: make demo-down
EOT
