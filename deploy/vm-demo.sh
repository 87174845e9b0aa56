#!/bin/sh
# `make vm-demo`: shoal on three Debian 12 VMs (one manager, two workers),
# brought up by deploy/vagrant/Vagrantfile with the locally built box, in
# the VM tier's network namespace (deploy/vagrant/vmenv.sh); a replicated
# service of the echo image published on port 8080, and every VM answering
# on it. Works without KVM (emulated: a few minutes). Needs root.
# `make vm-demo-down` (this script with "down") removes it all.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

work=/var/tmp/shoal-vm-demo
ns=shoal-vm
vmenv="sh deploy/vagrant/vmenv.sh"
export VAGRANT_HOME=/var/cache/shoal/vm/vagrant.d
export VAGRANT_DOTFILE_PATH="$work/vagrant"
export VAGRANT_CWD="$root/deploy/vagrant"
export VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export SHOAL_MANAGERS=1 SHOAL_WORKERS=2 SHOAL_NET=192.168.56
ssh_vm() { ip netns exec $ns ssh -F "$work/ssh_config" "$@"; }

if [ "${1:-}" = down ]; then
	if [ -d "$VAGRANT_DOTFILE_PATH" ] && [ -e /run/netns/$ns ]; then
		SHOAL_BOX=unused $vmenv exec vagrant destroy -f >/dev/null 2>&1 || true
	fi
	$vmenv down
	# Also what `SHOAL_VM_KEEP=1 make test-vm` kept.
	rm -rf "$work" /var/tmp/shoal-vm-test
	exit 0
fi

sh deploy/setup-vm.sh
echo "==> the box (built once, then reused: deploy/vagrant/box/build-box.sh)"
SHOAL_BOX=$(sh deploy/vagrant/box/build-box.sh)
export SHOAL_BOX
echo "==> namespace $ns with its own libvirtd (removes a previous demo or test run)"
$vmenv up
rm -rf "$work"
mkdir -p "$work"
echo "==> vagrant up --parallel (log: $work/vagrant-up.log)"
if ! $vmenv exec vagrant up --parallel >"$work/vagrant-up.log" 2>&1; then
	tail -n 30 "$work/vagrant-up.log" >&2
	echo "vagrant up failed; remove what it made with: make vm-demo-down" >&2
	exit 1
fi
$vmenv exec vagrant ssh-config >"$work/ssh_config"

echo
echo "==> sudo shoalctl node ls (on manager1)"
ssh_vm manager1 sudo shoalctl node ls
echo
echo "==> the echo image, built here and loaded on manager1 (no registry)"
mkdir -p out
bin/shoal-testimage build -o out/echo.tar
ssh_vm manager1 'cat > /tmp/echo.tar' <out/echo.tar
ssh_vm manager1 sudo shoalctl image load /tmp/echo.tar
echo
echo "==> sudo shoalctl service create --name web --replicas 2 --publish 8080:80 --env GREETING=hello shoal.test/echo:latest"
ssh_vm manager1 sudo shoalctl service create --name web --replicas 2 --publish 8080:80 --env GREETING=hello shoal.test/echo:latest
ssh_vm manager1 sudo shoalctl service ps web
echo
echo "==> port 8080 answers on every VM, also the one without a replica (routing mesh)"
# Tasks start in seconds; the mesh follows on every node.
deadline=$(($(date +%s) + 180))
for addr in 192.168.56.11 192.168.56.21 192.168.56.22; do
	until ip netns exec $ns bin/shoal-testimage get "http://$addr:8080/" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge $deadline ]; then
			echo "$addr:8080 does not answer; the VMs stay up for a look (make vm-demo-down removes them)" >&2
			exit 1
		fi
		sleep 1
	done
	for i in 1 2 3; do
		printf '%s:8080 -> ' "$addr"
		ip netns exec $ns bin/shoal-testimage get "http://$addr:8080/" | sed -n 's/^task=//p'
	done
done
cat <<EOT

The VMs keep running, in network namespace $ns (their addresses exist only there). Try:
  ip netns exec $ns ssh -F $work/ssh_config manager1 sudo shoalctl service scale web=4
  ip netns exec $ns ssh -F $work/ssh_config worker1 sudo ipvsadm -Ln
  ip netns exec $ns bin/shoal-testimage load -n 200 http://192.168.56.21:8080
Remove them with: make vm-demo-down
EOT
