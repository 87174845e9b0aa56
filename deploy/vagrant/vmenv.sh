#!/bin/sh
# The place the VM tier's VMs live in on a host without an init system (CI,
# containers): a network namespace of their own, with only lo, in which
# virtlogd and libvirtd run; libvirt's bridges, its dnsmasq and every qemu
# are made in there too. Nothing of it reaches the host's namespace, and the
# VMs' NAT networks have no uplink to reach anything with.
#
#   vmenv.sh up          clean what a crashed run left, then make the namespace and start the daemons
#   vmenv.sh down        destroy shoal's domains, volumes, networks (and the pool if it made it),
#                        stop the daemons it started, remove the namespace; safe to run again
#   vmenv.sh exec CMD    run CMD inside the namespace (vagrant, ssh, curl...)
#
# Only what is named shoal-* in libvirt is touched, and only daemons whose
# pids this script wrote. It refuses to start when a libvirtd it did not
# start already serves the host (stop that one first). Needs root.
set -eu

ns=${SHOAL_VM_NETNS:-shoal-vm}
state=/run/shoal-vm
cache=${SHOAL_VM_CACHE:-/var/cache/shoal/vm}
# Domains, volumes (theirs and the box's) and networks the Vagrantfile makes
# all start with this.
prefix=shoal-
uri=qemu:///system

log() { echo "vmenv: $*" >&2; }
virsh_() { virsh -q -c "$uri" "$@"; }

# alive PIDFILE NAME: the daemon of that pid file still runs.
alive() {
	pid=$(cat "$1" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop PIDFILE NAME: TERM, then KILL after 10 s.
stop() {
	if alive "$1" "$2"; then
		kill "$pid" 2>/dev/null || true
		i=0
		while alive "$1" "$2" && [ $i -lt 100 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		if alive "$1" "$2"; then kill -9 "$pid" 2>/dev/null || true; fi
	fi
	rm -f "$1"
}

ns_exists() { [ -e "/run/netns/$ns" ]; }

leftover_definitions() {
	ls /etc/libvirt/qemu/$prefix*.xml /etc/libvirt/qemu/networks/$prefix*.xml 2>/dev/null | grep -q .
}

start_daemons() {
	mkdir -p "$state"
	if ! ns_exists; then
		ip netns add "$ns"
	fi
	ip -n "$ns" link set lo up
	alive "$state/virtlogd.pid" virtlogd ||
		ip netns exec "$ns" virtlogd --daemon --pid-file "$state/virtlogd.pid"
	alive "$state/libvirtd.pid" libvirtd ||
		ip netns exec "$ns" libvirtd --daemon --pid-file "$state/libvirtd.pid"
	i=0
	until virsh_ version >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 300 ]; then
			log "libvirtd does not answer after 30 s"
			exit 1
		fi
		sleep 0.1
	done
}

down() {
	if ! ns_exists && ! alive "$state/libvirtd.pid" libvirtd && ! leftover_definitions; then
		return 0
	fi
	if foreign_libvirtd; then
		log "a libvirtd this script did not start serves $uri: not touching it; stop it, then run '$0 down' again"
		exit 1
	fi
	start_daemons
	for dom in $(virsh_ list --all --name | grep "^$prefix" || true); do
		virsh_ destroy "$dom" >/dev/null 2>&1 || true
		virsh_ undefine --remove-all-storage "$dom" >/dev/null 2>&1 || virsh_ undefine "$dom" >/dev/null 2>&1 || true
	done
	if virsh_ pool-info default >/dev/null 2>&1; then
		virsh_ pool-start default >/dev/null 2>&1 || true
		for vol in $(virsh_ vol-list default | awk -v p="$prefix" 'index($1, p) == 1 { print $1 }'); do
			virsh_ vol-delete --pool default "$vol" >/dev/null || true
		done
		if [ -e "$cache/pool-default-ours" ]; then
			virsh_ pool-destroy default >/dev/null 2>&1 || true
			virsh_ pool-undefine default >/dev/null 2>&1 || true
			rm -f "$cache/pool-default-ours"
		fi
	fi
	for net in $(virsh_ net-list --all --name | grep "^$prefix" || true); do
		virsh_ net-destroy "$net" >/dev/null 2>&1 || true
		virsh_ net-undefine "$net" >/dev/null 2>&1 || true
	done
	stop "$state/libvirtd.pid" libvirtd
	stop "$state/virtlogd.pid" virtlogd
	# Whatever still runs in the namespace was started in it by this tier
	# (a qemu or dnsmasq whose libvirtd was killed).
	if ns_exists; then
		for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null || true; done
		sleep 1
		for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
		ip netns delete "$ns"
	fi
	rm -rf "$state"
	if leftover_definitions; then
		log "libvirt still holds definitions named $prefix*: $(ls /etc/libvirt/qemu/$prefix*.xml /etc/libvirt/qemu/networks/$prefix*.xml 2>/dev/null | tr '\n' ' ')"
		exit 1
	fi
}

# foreign_libvirtd: some libvirtd answers, and it is not the one in our pid file.
foreign_libvirtd() {
	alive "$state/libvirtd.pid" libvirtd && return 1
	virsh_ version >/dev/null 2>&1
}

up() {
	down
	if foreign_libvirtd; then
		log "a libvirtd this script did not start serves $uri; the VM tier runs its own inside namespace $ns: stop that one first"
		exit 1
	fi
	start_daemons
	mkdir -p "$cache"
	if ! virsh_ pool-info default >/dev/null 2>&1; then
		# vagrant-libvirt will make the pool; down removes it again.
		touch "$cache/pool-default-ours"
	fi
	log "namespace $ns: libvirtd pid $(cat "$state/libvirtd.pid"), virtlogd pid $(cat "$state/virtlogd.pid")"
}

case "${1:-}" in
up) up ;;
down) down ;;
exec)
	shift
	exec ip netns exec "$ns" "$@"
	;;
*)
	echo "usage: $0 up|down|exec CMD..." >&2
	exit 2
	;;
esac
