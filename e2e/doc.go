// Package e2e holds end-to-end tests: real shoald processes, real
// containerd and runc, images built by the tests themselves. They read like
// a user's session. They need root and containerd (`make setup`) and are
// skipped without them.
package e2e
