// Package identity is who a cluster member is and how it proves it, for
// managers, workers and the CLI alike: roles and the identity a
// certificate names, the credentials a node or an operator keeps on disk
// (ca.pem, cert.pem, key.pem), the root CA's certificate handling and
// signing, join tokens, the TLS 1.3 configurations every connection uses
// (server names, ALPN protocols) and the default cluster port.
//
// A certificate names its node id (CN), its role (OU: shoal-worker,
// shoal-manager or shoal-admin) and the cluster id (O). Managers' server
// certificates carry the DNS name "shoal-manager", which clients verify,
// so a worker can never pose as a manager.
//
// It sits below every role: it imports only the API types, and nothing
// that stores, listens or dials. The manager's CA service and the check
// of every RPC against the store live in manager/ca.
package identity
