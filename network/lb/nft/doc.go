// Package nft is the nftables load balancer backend, in the style of
// kube-proxy's nftables mode: one inet table (shoal-lb by default) whose
// verdict maps lead each published port or VIP to a chain of its own, whose
// one rule marks for masquerade and DNATs to the backend a numgen-indexed map
// picks. Apply changes only the chains and map elements of frontends that
// changed, in one transaction; after any error the next Apply rebuilds the
// table in one transaction.
//
// It owns its table (and the conntrack entries of UDP backends it removes)
// in one network namespace, and nothing else: forwarding sysctls, filter
// rules and routes belong to the caller.
//
// It writes through a small interface (conn, which *nftables.Conn
// implements), so that its rule planning is tested without root against
// network/lb/internal/nfttest's fake: the conformance suite, and golden
// files of whole rulesets and of what one change sends (testdata, go test
// -update). Kernel tests, as root in throwaway namespaces, check that the
// same rules carry traffic.
package nft
