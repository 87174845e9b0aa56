// Package vm is shoal's VM tier: tests against a cluster of real Debian 12
// virtual machines (one manager, two workers), each with its own kernel,
// containerd and shoald under systemd, brought up by the same Vagrantfile
// users run (deploy/vagrant).
//
// TestMain installs what is missing (deploy/setup-vm.sh), builds or reuses
// the local box (deploy/vagrant/box/build-box.sh), makes the network
// namespace the VMs live in and starts libvirtd there
// (deploy/vagrant/vmenv.sh), runs `vagrant up --parallel` once for the whole
// package, and destroys it all at the end, even after a failure. Tests get
// the cluster with vmCluster(t) and talk to it as a user would: shoalctl on
// a manager over ssh, and requests to the VMs' addresses from inside the
// namespace (the only place those addresses exist on this host).
//
// The tests share that cluster in file order: the kernel suites in the
// VMs (kernel_test.go), the routing mesh with each load balancer
// (mesh_test.go, which restarts shoald with nftables, then with auto),
// then restarts of containerd and `shoald leave` (systemd_test.go), which
// shrinks the cluster and so comes last. The benchmarks (bench_test.go,
// `make bench-vm`) run on a cluster of their own. docs/vms.md lists what
// each test checks.
//
// It needs root, and about 4 GB of memory and 2 CPUs for a few minutes;
// without root, or with -short, its tests are skipped. `make test-vm` runs
// it. Set SHOAL_VM_KEEP=1 to leave the cluster up afterwards (remove it
// with `make vm-demo-down`).
package vm
