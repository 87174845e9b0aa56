package testimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-project/shoal/image"
)

// AnnotationImageName is the index annotation containerd's importer reads
// to name the image it creates (images.AnnotationImageName in containerd;
// repeated here so the writer does not depend on the containerd client).
const AnnotationImageName = "io.containerd.image.name"

// epoch is the timestamp of every tar entry and of the image config, so the
// same files always give the same digests (as SOURCE_DATE_EPOCH=0 would).
var epoch = time.Unix(0, 0).UTC()

// File is one entry of the image's single layer.
type File struct {
	// Path inside the image, slash separated; a leading "/" is optional.
	Path string
	// Data is the content of a regular file, or the target of a symlink.
	Data []byte
	// Mode holds the permission bits plus fs.ModeDir or fs.ModeSymlink for
	// those kinds; other type bits are refused. Zero means a 0644 file.
	Mode fs.FileMode
}

// Image describes an image to write as an OCI layout tarball.
type Image struct {
	// Ref names the image, e.g. "shoal.test/echo:latest". It is
	// normalized the way docker and containerd do ("echo" becomes
	// "docker.io/library/echo:latest").
	Ref string
	// Files make up the one layer. Parent directories are added (0755)
	// when not listed.
	Files []File
	// Config is the runtime configuration: Entrypoint, Cmd, Env,
	// WorkingDir, ExposedPorts, User, Labels.
	Config ocispec.ImageConfig
	// Healthcheck, when set, is written into the config as Docker writes
	// a HEALTHCHECK (the OCI config has no such field; runtimes that
	// honour it read Docker's).
	Healthcheck *image.Healthcheck
	// Platform defaults to linux on the architecture of this binary.
	Platform ocispec.Platform
}

// imageConfig is an OCI image config with Docker's Healthcheck beside the
// OCI fields; the outer config field hides ocispec.Image's.
type imageConfig struct {
	ocispec.Image
	Config runtimeConfig `json:"config,omitempty"`
}

type runtimeConfig struct {
	ocispec.ImageConfig
	Healthcheck *image.Healthcheck `json:"Healthcheck,omitempty"`
}

// WriteOCI writes img to w as an OCI image layout tarball (oci-layout,
// index.json, blobs/sha256/...) with one uncompressed layer, and returns the
// descriptor of the manifest. The output is a pure function of img.
func WriteOCI(w io.Writer, img Image) (ocispec.Descriptor, error) {
	name, err := normalizeRef(img.Ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	platform := img.Platform
	if platform.OS == "" {
		platform.OS = "linux"
	}
	if platform.Architecture == "" {
		platform.Architecture = runtime.GOARCH
	}

	layer, err := layerTar(img.Files)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("build layer of %s: %w", name, err)
	}
	// Uncompressed, so the layer digest is also its diff ID.
	layerDesc := descriptor(ocispec.MediaTypeImageLayer, layer)

	created := epoch
	config, err := json.Marshal(imageConfig{
		Image: ocispec.Image{
			Created:  &created,
			Platform: platform,
			RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
			History:  []ocispec.History{{Created: &created, CreatedBy: "shoal testimage"}},
		},
		Config: runtimeConfig{ImageConfig: img.Config, Healthcheck: img.Healthcheck},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode config of %s: %w", name, err)
	}
	configDesc := descriptor(ocispec.MediaTypeImageConfig, config)

	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode manifest of %s: %w", name, err)
	}
	manifestDesc := descriptor(ocispec.MediaTypeImageManifest, manifest)
	manifestDesc.Platform = &platform
	manifestDesc.Annotations = map[string]string{
		AnnotationImageName: name,
		// By OCI convention ref.name is the tag; tools that look up an
		// image in a layout by tag (skopeo oci-archive:FILE:TAG) use it.
		ocispec.AnnotationRefName: refName(name),
	}

	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode index of %s: %w", name, err)
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode oci-layout: %w", err)
	}

	blobs := map[digest.Digest][]byte{
		layerDesc.Digest:    layer,
		configDesc.Digest:   config,
		manifestDesc.Digest: manifest,
	}
	entries := []tarEntry{
		{hdr: dirHeader(ocispec.ImageBlobsDir + "/")},
		{hdr: dirHeader(ocispec.ImageBlobsDir + "/" + string(digest.SHA256) + "/")},
	}
	for _, d := range slices.Sorted(maps.Keys(blobs)) {
		entries = append(entries, fileEntry(path.Join(ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded()), blobs[d]))
	}
	entries = append(entries,
		fileEntry(ocispec.ImageIndexFile, index),
		fileEntry(ocispec.ImageLayoutFile, layout),
	)
	if err := writeTar(w, entries); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write image %s: %w", name, err)
	}
	return manifestDesc, nil
}

// normalizeRef returns the full name containerd would give ref, with the
// tag "latest" when none is given. Digest references are refused: the
// digest is the writer's to compute.
func normalizeRef(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("image reference is empty")
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return "", fmt.Errorf("image reference %q has a digest; give a name and tag", ref)
	}
	return reference.TagNameOnly(named).String(), nil
}

// refName is the tag of a normalized reference.
func refName(name string) string {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	if tagged, ok := named.(reference.Tagged); ok {
		return tagged.Tag()
	}
	return name
}

func descriptor(mediaType string, blob []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func dirHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
}

func fileEntry(name string, data []byte) tarEntry {
	return tarEntry{
		hdr:  &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX},
		data: data,
	}
}

func writeTar(w io.Writer, entries []tarEntry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		if err := tw.WriteHeader(e.hdr); err != nil {
			return fmt.Errorf("write tar header %s: %w", e.hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("write tar entry %s: %w", e.hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finish tar: %w", err)
	}
	return nil
}

// layerTar builds the layer: files sorted by path, each preceded by its
// missing parent directories, owned by root.
func layerTar(files []File) ([]byte, error) {
	byPath := map[string]File{}
	for _, f := range files {
		p, err := cleanLayerPath(f.Path)
		if err != nil {
			return nil, err
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("file %q listed twice", p)
		}
		if f.Mode&fs.ModeType&^(fs.ModeDir|fs.ModeSymlink) != 0 {
			return nil, fmt.Errorf("file %q: unsupported mode %v", p, f.Mode)
		}
		byPath[p] = f
	}
	for p := range byPath {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if f, ok := byPath[dir]; ok {
				if !f.Mode.IsDir() {
					return nil, fmt.Errorf("file %q is inside %q, which is not a directory", p, dir)
				}
				continue
			}
			byPath[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
		}
	}

	var entries []tarEntry
	for _, p := range slices.Sorted(maps.Keys(byPath)) {
		f := byPath[p]
		hdr := &tar.Header{Name: p, Mode: tarMode(f.Mode), ModTime: epoch, Format: tar.FormatPAX}
		var data []byte
		switch {
		case f.Mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case f.Mode&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = string(f.Data)
		default:
			hdr.Typeflag = tar.TypeReg
			if f.Mode == 0 {
				hdr.Mode = 0o644
			}
			hdr.Size = int64(len(f.Data))
			data = f.Data
		}
		entries = append(entries, tarEntry{hdr: hdr, data: data})
	}
	var buf bytes.Buffer
	if err := writeTar(&buf, entries); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarMode keeps the permission and setuid/setgid/sticky bits, in tar's
// encoding (which differs from fs.FileMode's for the special bits).
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// cleanLayerPath makes p relative to the layer root and refuses paths that
// would leave it.
func cleanLayerPath(p string) (string, error) {
	rel := strings.TrimPrefix(p, "/")
	if rel == "" || !fs.ValidPath(rel) || rel == "." {
		return "", fmt.Errorf("invalid path %q in image", p)
	}
	return rel, nil
}
