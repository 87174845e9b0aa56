#!/bin/sh
# Installs what the VM tier (`make test-vm`, `make vm-demo`) needs on a
# Debian 12 host, from Debian's packages, without recommends: Vagrant with
# its libvirt provider, libvirt, qemu (TCG is enough: no /dev/kvm needed),
# and the tools deploy/vagrant/box/build-box.sh makes the box with. Safe to
# run again: it only installs what is missing. Needs root.
#
# Nothing is started here: the harness starts libvirtd itself, inside a
# network namespace of its own (see docs/vms.md).
set -eu

pkgs="vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients
qemu-system-x86 qemu-utils debootstrap dnsmasq-base extlinux fdisk
openssh-client iproute2 e2fsprogs"

need=""
for pkg in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		need="$need $pkg"
	fi
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "setup-vm: missing packages:$need; run as root to install them" >&2
	exit 1
fi
echo "setup-vm: installing$need"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
