// Package imagetar reads image tarballs (an OCI image layout, or a `docker
// save` archive) the way containerd's importer does, without containerd:
// whether a stream is one containerd can import, and which image names
// the import will create. Managers use it to refuse a bad tarball before
// it is kept and sent to every node; the worker's importer uses the same
// naming rule, so both sides agree on the names an image gets.
//
// It reads; it never writes content anywhere.
package imagetar
