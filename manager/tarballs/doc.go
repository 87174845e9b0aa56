// Package tarballs keeps a manager's copies of the image tarballs loaded
// with `shoalctl image load`: one file per image, named by the sha256 of
// its bytes, written through a temporary file so that a reader never sees
// a partial tarball. The managers' store says which images exist and who
// holds them; this package only keeps the bytes and never decides what to
// keep on its own.
package tarballs
