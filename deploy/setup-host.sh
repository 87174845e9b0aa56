#!/bin/sh
# Installs what shoal needs on a Debian host, from Debian's packages, and
# starts containerd if nothing serves its socket. Safe to run again: it only
# acts on what is missing. Needs root.
set -eu

need=""
for pkg in containerd runc nftables iproute2; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		need="$need $pkg"
	fi
done
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: missing packages:$need; run as root to install them" >&2
		exit 1
	fi
	echo "setup: installing$need"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
	if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
		systemctl start containerd
	else
		# No systemd (containers, CI): run containerd in the background.
		echo "setup: starting containerd (log: /var/log/containerd.log)"
		setsid nohup containerd >/var/log/containerd.log 2>&1 </dev/null &
	fi
	i=0
	until ctr --address "$sock" version >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 100 ]; then
			echo "setup: containerd did not come up; see /var/log/containerd.log" >&2
			exit 1
		fi
		sleep 0.1
	done
fi
