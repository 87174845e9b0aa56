// Package attach connects a task's network namespace to an overlay network
// on its node: a veth pair whose host end joins the network's bridge and
// whose other end becomes the task's interface (eth0) with its address, MTU
// and default route. It also owns the egress masquerade rules (the nftables
// table shoal-nat) that let tasks reach addresses outside their overlay.
//
// It changes nothing but the veths it creates, the task namespaces it is
// given and its own nftables table; bridges belong to package overlay.
package attach
