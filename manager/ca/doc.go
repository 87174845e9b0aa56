// Package ca is the manager's side of cluster identity: a new cluster's
// founding identity (root CA, join tokens, the first manager's and the
// admin's credentials: Found), the CA gRPC API (a joining node's first
// certificate, renewals, the root CA certificate), join token rotation,
// admin certificates (issued, recorded, revoked: admin.go), root CA
// rotation (rotation.go), and the check that runs before every RPC (who
// is calling, may their role call this method, and is their certificate
// still the one the store records for their node or, for an admin, in the
// cluster's list: a certificate whose node was removed, that a renewal
// replaced, or that was revoked, is refused).
//
// Certificates, tokens and TLS configurations themselves are package
// identity's. This package does not listen, dial, or decide when to
// renew: the daemon wires those.
package ca
