#!/bin/sh
# Builds the Debian 12 Vagrant box (libvirt, qcow2) the VM tier boots, from
# Debian's packages only, and adds it to Vagrant (VAGRANT_HOME as set).
# Prints the box's name on stdout; everything else goes to stderr.
#
#   deploy/vagrant/box/build-box.sh           build once, reuse afterwards
#   SHOAL_BOX_REBUILD=1 deploy/vagrant/box/build-box.sh
#
# The box is cached under $SHOAL_VM_CACHE (default /var/cache/shoal/vm),
# keyed by this script's content: a changed script makes a new box (and a
# new box name), an unchanged one is reused. The packages come from the apt
# mirror this host uses (or $SHOAL_BOX_MIRROR). Needs root, debootstrap,
# extlinux, sfdisk, qemu-img (deploy/setup-vm.sh installs them).
#
# Why the box looks as it does (docs/vms.md has the long form):
#  - an empty /etc/machine-id, and dbus's id a link to it: every VM makes its
#    own at first boot (a copied id gave every VM the same DHCP lease);
#  - an empty resolv.conf and the hostname in /etc/hosts: the VMs have no
#    resolver, and a lookup of the host's one would time out;
#  - ed25519 and ecdsa host keys made at first boot, no RSA: an RSA key
#    takes 13-36 s to make under emulation;
#  - bootable (MBR + extlinux), not a kernel outside the disk: qemu runs as
#    libvirt-qemu and cannot read a kernel in root's 0700 home, where
#    Vagrant keeps its boxes by default;
#  - linux-image-cloud-amd64: small and fast to boot, with IPVS (but no 9p,
#    so synced folders stay off).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
cache=${SHOAL_VM_CACHE:-/var/cache/shoal/vm}
suite=bookworm
# Virtual disk size in GiB; the qcow2 holds only what is used (~0.5 GiB).
size_gib=8
# Kernel options for throwaway test VMs under emulation: no speculation
# mitigations (retpolines and return thunks are expensive to emulate), no
# 5-level page tables, no lockup watchdog and a trusted TSC (a loaded host
# stalls emulated CPUs for seconds).
cmdline="mitigations=off no5lvl nowatchdog tsc=reliable"
packages=systemd-sysv,udev,dbus,openssh-server,sudo,linux-image-cloud-amd64,containerd,runc,nftables,ipvsadm,iproute2,conntrack,kmod,procps,iputils-ping,netbase

hash=$(sha256sum "$self" | cut -c1-12)
name="shoal/bookworm-$hash"
dir="$cache/box-$hash"
box="$dir/shoal-bookworm.box"

log() { echo "build-box: $*" >&2; }

# The Debian mirror of this host's apt sources (deb822 .sources files or
# one-line lists), for the main suite.
host_mirror() {
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v suite="$suite" '
			/^[ \t]*$/ { if (deb && hit && uri != "") { print uri; exit } deb = hit = 0; uri = ""; next }
			tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
			tolower($1) == "uris:" { uri = $2 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
			END { if (deb && hit && uri != "") print uri }' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk -v suite="$suite" '$1 == "deb" {
			i = 2; if ($i ~ /^\[/) while ($i !~ /\]$/) i++; if ($i ~ /^\[/ || $i ~ /\]$/) i++
			if ($(i + 1) == suite) print $i }' "$f"
	done
}

build() {
	mirror=${SHOAL_BOX_MIRROR:-$(host_mirror | head -n 1)}
	if [ -z "$mirror" ]; then
		log "no Debian mirror for $suite in /etc/apt/sources.list*; set SHOAL_BOX_MIRROR"
		exit 1
	fi
	key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1)
	if [ -z "$key" ]; then
		log "Vagrant's insecure public key not found: install vagrant (deploy/setup-vm.sh)"
		exit 1
	fi
	work=$(mktemp -d "${TMPDIR:-/var/tmp}/shoal-box.XXXXXX")
	root="$work/root"
	mnt="$work/mnt"
	trap 'cleanup_build' EXIT
	trap 'exit 1' INT TERM

	log "debootstrap $suite from $mirror (download)"
	debootstrap --foreign --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap1.log" 2>&1 ||
		{ tail -n 20 "$work/debootstrap1.log" >&2; exit 1; }
	# Nothing the packages' scripts might start may run, and their
	# configuration step gets no network at all.
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 755 "$root/usr/sbin/policy-rc.d"
	log "debootstrap second stage (configure, no network)"
	unshare --net --mount --propagation private chroot "$root" /debootstrap/debootstrap --second-stage >"$work/debootstrap2.log" 2>&1 ||
		{ tail -n 20 "$work/debootstrap2.log" >&2; exit 1; }

	log "configure"
	configure "$root" "$mirror" "$key"
	rm -f "$root/usr/sbin/policy-rc.d"

	log "disk image"
	kver=$(ls "$root/lib/modules" | head -n 1)
	disk="$work/disk.raw"
	part="$work/part.raw"
	truncate -s "${size_gib}G" "$disk"
	# One bootable Linux partition from 1 MiB to the end.
	echo 'start=2048, type=83, bootable' | sfdisk -q "$disk"
	truncate -s $((size_gib * 1024 - 1))M "$part"
	# syslinux 6.04 reads ext4 without 64bit and metadata_csum only.
	mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum -d "$root" "$part"
	dd if="$part" of="$disk" bs=1M seek=1 conv=sparse,notrunc status=none
	rm -f "$part"
	mkdir -p "$mnt"
	loop=$(losetup -f --show -o 1048576 "$disk")
	mount "$loop" "$mnt"
	mkdir -p "$mnt/boot/extlinux"
	extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
	cat >"$mnt/boot/extlinux/extlinux.conf" <<-EOF
		DEFAULT debian
		PROMPT 0
		TIMEOUT 0
		LABEL debian
		  LINUX /boot/vmlinuz-$kver
		  INITRD /boot/initrd.img-$kver
		  APPEND root=LABEL=root rw console=ttyS0 net.ifnames=0 quiet $cmdline
	EOF
	umount "$mnt"
	losetup -d "$loop"
	loop=""
	dd if=/usr/lib/EXTLINUX/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none

	log "qcow2 and box"
	out="$work/box"
	mkdir -p "$out"
	qemu-img convert -O qcow2 "$disk" "$out/box.img"
	rm -f "$disk"
	printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$size_gib" >"$out/metadata.json"
	cat >"$out/Vagrantfile" <<-'EOF'
		# shoal's local Debian 12 box: no synced folders (the cloud kernel has no 9p).
		Vagrant.configure("2") do |config|
		  config.vm.synced_folder ".", "/vagrant", disabled: true
		end
	EOF
	mkdir -p "$dir"
	tar -C "$out" -cf "$dir/.box.tmp" metadata.json Vagrantfile box.img
	mv "$dir/.box.tmp" "$box"
}

work=""
loop=""
cleanup_build() {
	[ -n "$work" ] || return 0
	if [ -n "$loop" ]; then
		umount "$mnt" 2>/dev/null || true
		losetup -d "$loop" 2>/dev/null || true
	fi
	rm -rf "$work"
}

# configure ROOT MIRROR KEY: what turns a debootstrapped tree into a box.
configure() {
	r=$1
	echo shoal >"$r/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tshoal\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
	: >"$r/etc/resolv.conf"
	: >"$r/etc/machine-id"
	mkdir -p "$r/var/lib/dbus"
	ln -sf /etc/machine-id "$r/var/lib/dbus/machine-id"
	# The kernel mounts the root rw (no remount at boot).
	printf 'LABEL=root / ext4 defaults 0 0\n' >"$r/etc/fstab"
	printf 'deb %s %s main\n' "$2" "$suite" >"$r/etc/apt/sources.list"

	mkdir -p "$r/etc/systemd/network"
	printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >"$r/etc/systemd/network/10-eth0.network"
	chroot "$r" systemctl -q enable systemd-networkd.service
	# Nothing waits for "online": addresses are static or come at once.
	chroot "$r" systemctl -q disable systemd-networkd-wait-online.service 2>/dev/null || true
	# Units that would use the emulated CPU for nothing (each start costs
	# seconds there): timers (no network to fetch from, throwaway disks),
	# modules and file systems for what the VMs do not have or use, IPVS
	# rules restored from a file (shoald programs IPVS itself), users that
	# exist already, a remount to the options the kernel mounted with,
	# network settings from the kernel's command line, utmp records, a
	# persistent journal (the journal stays in memory), and logind (no PAM
	# module uses it: nobody logs in but over ssh).
	chroot "$r" systemctl -q mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
		e2scrub_reap.service ipvsadm.service \
		modprobe@drm.service modprobe@fuse.service modprobe@loop.service modprobe@efi_pstore.service \
		modprobe@dm_mod.service modprobe@configfs.service sys-kernel-config.mount sys-kernel-debug.mount \
		sys-kernel-tracing.mount dev-hugepages.mount systemd-sysusers.service systemd-remount-fs.service \
		systemd-network-generator.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
		systemd-journal-flush.service systemd-logind.service
	mkdir -p "$r/etc/systemd/journald.conf.d"
	printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/shoal-box.conf"
	# shoald drives containerd through its API: no CRI, and no probing of
	# snapshotters other than overlayfs (each costs seconds at start).
	mkdir -p "$r/etc/containerd"
	cat >"$r/etc/containerd/config.toml" <<-'EOF'
		version = 2
		disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
	EOF

	rm -f "$r"/etc/ssh/ssh_host_*
	cat >"$r/etc/ssh/sshd_config.d/shoal-box.conf" <<-'EOF'
		HostKey /etc/ssh/ssh_host_ed25519_key
		HostKey /etc/ssh/ssh_host_ecdsa_key
		UseDNS no
	EOF
	cat >"$r/etc/systemd/system/ssh-host-keys.service" <<-'EOF'
		[Unit]
		Description=Make this VM's SSH host keys (ed25519 and ecdsa: RSA is slow to make under emulation)
		ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
		Before=ssh.service

		[Service]
		Type=oneshot
		ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
		ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

		[Install]
		WantedBy=multi-user.target
	EOF
	chroot "$r" systemctl -q enable ssh-host-keys.service ssh.service
	# containerd starts when the provisioner makes the VM a node (and at
	# every boot after that), not while the VM boots and sshd is awaited.
	chroot "$r" systemctl -q disable containerd.service

	chroot "$r" useradd -m -s /bin/bash -G sudo vagrant
	echo vagrant:vagrant | chroot "$r" chpasswd
	install -d -m 700 "$r/home/vagrant/.ssh"
	install -m 600 "$3" "$r/home/vagrant/.ssh/authorized_keys"
	chroot "$r" chown -R vagrant:vagrant /home/vagrant/.ssh
	echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$r/etc/sudoers.d/vagrant"
	chmod 440 "$r/etc/sudoers.d/vagrant"

	# A small initramfs: the disk's drivers only (ext4 is built in), not
	# every module there is; unpacking and probing them cost seconds of
	# emulated CPU at every boot.
	echo MODULES=list >"$r/etc/initramfs-tools/conf.d/shoal-box.conf"
	printf 'virtio_pci\nvirtio_blk\n' >>"$r/etc/initramfs-tools/modules"
	unshare --net --mount --propagation private chroot "$r" sh -c 'mount -t proc proc /proc && update-initramfs -u -k all' >/dev/null

	chroot "$r" apt-get clean
	rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/log/*.log "$r/debootstrap"
}

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [ -n "${SHOAL_BOX_REBUILD:-}" ] || [ ! -s "$box" ]; then
	start=$(date +%s)
	build
	cleanup_build
	work=""
	log "built $box in $(($(date +%s) - start)) s"
	# Boxes of older versions of this script are of no use any more.
	for old in "$cache"/box-*; do
		[ "$old" = "$dir" ] || rm -rf "$old"
	done
else
	log "reusing $box"
fi

if command -v vagrant >/dev/null 2>&1; then
	if ! vagrant box list 2>/dev/null | grep -q "^$name "; then
		log "vagrant box add $name"
		vagrant box add --force --name "$name" "$box" >&2
	fi
	# Older shoal boxes in this VAGRANT_HOME are of no use any more.
	vagrant box list 2>/dev/null | awk -v n="$name" '$1 ~ /^shoal\/bookworm-/ && $1 != n { print $1 }' |
		while read -r old; do
			vagrant box remove --force --all "$old" >/dev/null 2>&1 || true
		done
fi
echo "$name"
