#!/bin/sh
# Makes a Debian 12 VM a shoal node; the Vagrantfile's provisioner, run as
# root. Safe to run again (`vagrant provision`): it only changes what
# differs, and restarts shoald when its binary or settings changed.
#
# From the environment:
#   SHOAL_NAME         this node's name (hostname)
#   SHOAL_ADDR         its address on the private network, with prefix (192.168.56.11/24)
#   SHOAL_ROLE         init (the first manager), manager or worker
#   SHOAL_MANAGER      the first manager's address (joiners fetch their token there)
#   SHOAL_LB_BACKEND   shoald --lb-backend: auto, ipvs or nftables
#   SHOAL_SHOALD_OPTS  more shoald flags (may be empty)
#   SHOAL_JOIN_PUB     the first manager: the public key joiners fetch tokens with
#   SHOAL_JOIN_KEY     joiners: its private key (PEM, base64)
# Beside this script in /tmp/shoal: shoald, shoalctl, shoald.service.
set -eu

src=/tmp/shoal
addr=${SHOAL_ADDR%/*}
defaults=/etc/default/shoald
datadir=/var/lib/shoal
# Bounds of the waits below. A joiner boots at the same time as the first
# manager and waits for it to have made the cluster: under emulation (no
# KVM) a VM takes 1-2 minutes to boot and provision.
token_wait=900
ready_wait=180

log() { echo "shoal: $SHOAL_NAME: $*"; }
fail() {
	echo "shoal: $SHOAL_NAME: $*" >&2
	exit 1
}

set_hostname() {
	[ "$(hostname)" = "$SHOAL_NAME" ] && grep -q "^127.0.1.1[[:space:]]$SHOAL_NAME\$" /etc/hosts && return 0
	echo "$SHOAL_NAME" >/etc/hostname
	hostname "$SHOAL_NAME"
	# The name resolves locally: the VMs have no DNS to ask.
	sed -i '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
	printf '127.0.1.1\t%s\n' "$SHOAL_NAME" >>/etc/hosts
}

# The private network's interface: the one that has the address already, or
# the first NIC without an IPv4 address that does not carry the default
# route (Vagrant's own network, which it reaches the VM through).
private_iface() {
	has=$(ip -o -4 addr show | awk -v a="$addr" '{ split($4, p, "/") } p[1] == a { print $2; exit }')
	if [ -n "$has" ]; then
		echo "$has"
		return
	fi
	def=$(ip -o -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
	for dev in /sys/class/net/*; do
		name=${dev##*/}
		[ -e "$dev/device" ] && [ "$name" != "$def" ] || continue
		[ -z "$(ip -o -4 addr show dev "$name")" ] || continue
		echo "$name"
		return
	done
}

set_address() {
	iface=$(private_iface)
	[ -n "$iface" ] || fail "no network interface for $SHOAL_ADDR: is the private network attached?"
	mac=$(cat "/sys/class/net/$iface/address")
	# Kept across reboots by whatever manages the box's network.
	if [ -d /etc/systemd/network ] && systemctl -q is-enabled systemd-networkd 2>/dev/null; then
		printf '[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s\n' "$mac" "$SHOAL_ADDR" >/etc/systemd/network/20-shoal.network
	elif [ -d /etc/network/interfaces.d ]; then
		printf 'auto %s\niface %s inet static\n\taddress %s\n' "$iface" "$iface" "$SHOAL_ADDR" >/etc/network/interfaces.d/shoal
	fi
	ip link set "$iface" up
	ip -o -4 addr show dev "$iface" | grep -q " $SHOAL_ADDR " || ip addr add "$SHOAL_ADDR" dev "$iface"
}

install_packages() {
	need=""
	for pkg in containerd runc nftables ipvsadm iproute2 conntrack; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need="$need $pkg"
	done
	if [ -n "$need" ]; then
		log "installing$need"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
	fi
	# Started now without waiting (it takes a while under emulation;
	# shoald.service waits for it), and at every boot.
	systemctl -q is-enabled containerd || systemctl -q --no-reload enable containerd
	systemctl -q is-active containerd || systemctl --no-block start containerd
	# The routing mesh: IPVS for --lb-backend auto/ipvs (auto uses it when
	# the kernel offers it), br_netfilter so that netfilter sees bridged
	# service traffic (a VIP backend's reply on the overlay), WireGuard
	# for encrypted networks (a node without it takes none of their tasks).
	printf 'ip_vs\nbr_netfilter\nnf_conntrack\nwireguard\n' >/etc/modules-load.d/shoal.conf
	modprobe -q ip_vs || log "no ip_vs module: the routing mesh uses nftables"
	modprobe -q br_netfilter || true
	modprobe -q wireguard || log "no wireguard module: this node takes no task of an encrypted network"
	# conntrack keeps every connection through the mesh for 120 s after it
	# ends (TIME_WAIT): a small VM's table (6144 entries at 768 MB) fills
	# at a few hundred requests a second, and a full table drops new
	# connections' SYNs (1 s retransmits, then timeouts). 131072 is
	# kube-proxy's floor.
	modprobe -q nf_conntrack || true
	echo 'net.netfilter.nf_conntrack_max = 131072' >/etc/sysctl.d/60-shoal.conf
	sysctl -q -p /etc/sysctl.d/60-shoal.conf || log "conntrack table size not set"
}

# install_file SRC DST MODE: moves SRC to DST unless DST has its content
# already; reports whether DST changed.
install_file() {
	if cmp -s "$1" "$2"; then
		return 1
	fi
	chown root:root "$1"
	chmod "$3" "$1"
	mkdir -p "$(dirname "$2")"
	mv -f "$1" "$2"
}

install_shoal() {
	changed=""
	install_file "$src/shoald" /usr/local/bin/shoald 755 && changed=1
	install_file "$src/shoalctl" /usr/local/bin/shoalctl 755 || true
	unit=/etc/systemd/system/shoald.service
	had_unit=""
	[ -e "$unit" ] && had_unit=1
	if install_file "$src/shoald.service" "$unit" 644; then
		# systemd reads a unit it has not loaded yet on first use; only a
		# changed one needs a reload (which costs seconds under emulation).
		[ -n "$had_unit" ] && systemctl daemon-reload
		changed=1
	fi
	new="$src/shoald.defaults"
	cat >"$new" <<-EOF
		# shoald's settings, read by shoald.service (written by the Vagrant provisioner).
		# Flags of every start:
		SHOALD_OPTS="--advertise-addr $addr${SHOAL_SHOALD_OPTS:+ $SHOAL_SHOALD_OPTS}"
		# The routing mesh's load balancer: auto, ipvs or nftables.
		SHOALD_LB_BACKEND=$SHOAL_LB_BACKEND
	EOF
	install_file "$new" "$defaults" 600 && changed=1
	rm -f "$new"
	if [ -n "$changed" ] && [ -e "$datadir/node.json" ]; then
		log "restarting shoald (new binary or settings)"
		systemctl restart shoald
	fi
}

# set_first CMD: how shoald starts the very first time (init or join).
set_first() {
	sed -i '/^SHOALD_FIRST=/d' "$defaults"
	[ -n "$1" ] && echo "SHOALD_FIRST=\"$1\"" >>"$defaults"
	return 0
}

# enable_shoald: started now and at every boot.
enable_shoald() {
	systemctl -q is-enabled shoald 2>/dev/null || systemctl -q --no-reload enable shoald
	systemctl start shoald
}

wait_ready() {
	i=0
	until shoalctl node ls >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt $ready_wait ]; then
			journalctl -u shoald --no-pager -n 30 >&2 || true
			fail "shoald does not answer after $ready_wait s (journalctl -u shoald)"
		fi
		sleep 1
	done
}

init_cluster() {
	# Joiners fetch a token over ssh with this key; it can run nothing but
	# shoal-join-token.
	install -D -m 755 /dev/stdin /usr/local/libexec/shoal-join-token <<-'EOF'
		#!/bin/sh
		# Forced command of the Vagrant cluster's join key: prints the join token of the role asked for.
		case "$SSH_ORIGINAL_COMMAND" in
		worker | manager) exec sudo -n /usr/local/bin/shoalctl cluster join-token -q "$SSH_ORIGINAL_COMMAND" ;;
		*) echo "ask for worker or manager" >&2; exit 2 ;;
		esac
	EOF
	keys=/home/vagrant/.ssh/authorized_keys
	pub=$SHOAL_JOIN_PUB
	if ! grep -qF "$pub" "$keys" 2>/dev/null; then
		sed -i '/ shoal-join$/d' "$keys"
		echo "restrict,command=\"/usr/local/libexec/shoal-join-token\" $pub shoal-join" >>"$keys"
	fi
	if [ ! -e "$datadir/node.json" ]; then
		set_first init
		log "shoald init --advertise-addr $addr --lb-backend $SHOAL_LB_BACKEND"
	fi
	enable_shoald
	wait_ready
	set_first ""
}

join_cluster() {
	if [ ! -e "$datadir/node.json" ]; then
		install -d -m 700 /root/.ssh
		(umask 077 && echo "$SHOAL_JOIN_KEY" | base64 -d >/root/.ssh/shoal-join)
		log "waiting for a $SHOAL_ROLE token from $SHOAL_MANAGER"
		start=$(date +%s)
		while :; do
			token=$(ssh -q -i /root/.ssh/shoal-join -o BatchMode=yes -o ConnectTimeout=5 \
				-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
				"vagrant@$SHOAL_MANAGER" "$SHOAL_ROLE" 2>/dev/null | tr -d '\r\n' || true)
			case "$token" in SHOAL-*) break ;; esac
			[ $(($(date +%s) - start)) -lt $token_wait ] ||
				fail "no join token from $SHOAL_MANAGER after $token_wait s: is the first manager up? (vagrant provision manager1)"
			sleep 3
		done
		set_first "join --token $token $SHOAL_MANAGER:4242"
		log "shoald join --token SHOAL-... $SHOAL_MANAGER:4242 (as $SHOAL_ROLE)"
	fi
	enable_shoald
	i=0
	until [ -e "$datadir/node.json" ] && systemctl -q is-active shoald; do
		i=$((i + 1))
		if [ $i -gt $ready_wait ]; then
			journalctl -u shoald --no-pager -n 30 >&2 || true
			fail "shoald did not join after $ready_wait s (journalctl -u shoald)"
		fi
		sleep 1
	done
	# The token has done its work: it does not stay on the disk.
	set_first ""
	rm -f /root/.ssh/shoal-join
}

set_hostname
set_address
install_packages
install_shoal
case "$SHOAL_ROLE" in
init) init_cluster ;;
manager | worker) join_cluster ;;
*) fail "SHOAL_ROLE=$SHOAL_ROLE: want init, manager or worker" ;;
esac
rm -rf "$src"
log "up: $SHOAL_ROLE at $addr, lb backend $SHOAL_LB_BACKEND"
