// Package imageimport loads an image tarball into containerd and unpacks
// it, under a lease so that a failed import leaves no content behind. The
// containerd executor loads the images the managers distribute with it;
// the test image builder loads its images with it too. It names images
// as package imagetar says, so that the names agree with the managers'.
//
// It is a package of its own, not part of the executor's, because the
// executor's tests build their images with the test image builder, which
// then could not import the executor.
package imageimport
