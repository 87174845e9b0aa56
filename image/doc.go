// Package image is shoal's one home for image tarballs: reading them the
// way containerd's importer does, without containerd (Inspect: whether a
// stream is an OCI image layout or a `docker save` archive containerd can
// import, and which names the import will give its images), and loading
// them into containerd (Import, ImportTo), under a lease so that a failed
// import leaves nothing behind, and only after the tarball was read to its
// end (where a caller's digest check fails), so that a tarball that is not
// the one expected never names an image. Managers inspect a tarball before they keep
// it and send it to every node; workers import it with the same naming
// rule, so both sides agree on the names an image gets. Healthcheck is
// the HEALTHCHECK of an image config, which the executor reads
// (ConfigHealthcheck) and the test image builder writes. PurgeNamespace
// empties a containerd namespace (the lab and tests use it to leave
// nothing behind).
//
// It sits below the roles: managers, workers, the lab and the test image
// builder import it; it imports none of them.
package image
