// Package state runs a manager's raft member: the hashicorp/raft node with
// its boltdb log and stable store and file snapshots under the data dir, and
// the FSM that applies protobuf commands to the store. Writers call Propose
// on the leader; every member's store follows the log. ToStatus is how the
// manager APIs answer Propose's and the store's errors.
//
// The disk is not trusted to be roomy or intact: a full raft dir makes
// Propose refuse with ErrDiskFull until space returns (diskGuard), and Open
// refuses damaged state with ErrDamaged (every log entry is checksummed,
// raft.db and the snapshots are checked before raft reads them).
//
// The raft transport is given by the caller: an in-memory one for a single
// manager, a mutually authenticated network one once managers join.
//
// Everything it writes is encrypted at rest (keys.go, sealed.go): log
// entries and snapshots are sealed with the member's data key, wrapped by
// a key on disk or, with autolock, by the cluster's unlock key; state an
// older shoald wrote in plaintext is sealed on start (migrate.go). Raft,
// the FSM and the transport see plaintext. See docs/security.md.
package state
