// Package seal encrypts small values at rest: XChaCha20-Poly1305 with a
// random nonce per value and associated data that binds a value to where
// it belongs, behind a version byte. The managers seal raft's log and
// snapshots with it (manager/state), workers their cached assignments
// (worker), each under keys of their own.
//
// It owns the cipher and the format of a sealed value, and how a key is
// derived from another secret; it knows nothing of where keys are kept.
// It sits below every role and imports nothing of ours.
package seal
