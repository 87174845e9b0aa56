// Package testimage builds the container images shoal's tests and demo run,
// without a registry: it compiles small static Go programs (the echo
// workload in ./echo), packs them into an OCI image layout tarball, and
// loads that tarball into containerd (with package image, as workers do).
//
// It owns the image format; it must not know about tasks,
// services or the executor. Tests call BuildEcho then Import (or LoadEcho
// for both), and refer to the image as EchoRef.
package testimage
