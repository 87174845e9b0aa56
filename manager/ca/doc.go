// Package ca owns the cluster's identities: the root CA (made once by
// `shoald init` and replicated through raft), node and admin certificates
// issued against CSRs, join tokens, the credentials a node keeps on disk,
// the TLS 1.3 configurations every connection uses, and the check that
// runs before every RPC (who is calling, and may their role call this
// method).
//
// A certificate names its node id (CN), its role (OU: shoal-worker,
// shoal-manager or shoal-admin) and the cluster id (O). Managers' server
// certificates carry the DNS name "shoal-manager", which clients verify,
// so a worker can never pose as a manager. The node object in the store
// records each node's current certificate serial: a certificate whose node
// was removed, or that was replaced by a renewal, is refused.
//
// The package also serves the CA gRPC API (join and renewal). It does not
// listen, dial, or decide when to renew: the daemon wires those.
package ca
