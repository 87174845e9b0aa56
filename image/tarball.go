package image

import (
	"archive/tar"
	// Digest validation needs the hash linked in.
	_ "crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationImageName is the index annotation containerd names an
// imported image by (images.AnnotationImageName in containerd).
const AnnotationImageName = "io.containerd.image.name"

// dockerManifestFile is the index of a `docker save` archive.
const dockerManifestFile = "manifest.json"

// maxJSON bounds one metadata file, as containerd's importer does: real
// ones are a few kB, and an unbounded decode would let a tarball take the
// manager's memory.
const maxJSON = 20 << 20

var (
	// ErrNotImage is wrapped by Inspect for a stream that is not an
	// image tarball containerd can import.
	ErrNotImage = errors.New("not an image tarball")
	// ErrNoNames is wrapped by Inspect for an image tarball that names
	// no image: importing it would create nothing a service can use.
	ErrNoNames = errors.New("the image tarball names no image")
)

// dockerManifest is one entry of a `docker save` manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// contents is what Inspect gathers in one pass over the tar stream.
type contents struct {
	layout   *ocispec.ImageLayout
	index    *ocispec.Index
	docker   []dockerManifest
	files    map[string]bool // regular files and symlinks, cleaned paths
	sawEntry bool
}

// Inspect reads an image tarball to its end and returns the names its
// import creates, in the order the tarball lists them, without repeats.
// Like containerd, it reads an OCI image layout when the tarball has an
// oci-layout file, and a Docker archive (manifest.json) otherwise. It
// returns an error wrapping ErrNotImage for anything else, and one
// wrapping ErrNoNames for an image tarball without names.
func Inspect(r io.Reader) ([]string, error) {
	c, err := read(r)
	if err != nil {
		return nil, err
	}
	var names []string
	switch {
	case c.layout != nil:
		names, err = c.ociNames()
	case c.docker != nil:
		names, err = c.dockerNames()
	case !c.sawEntry:
		return nil, fmt.Errorf("%w: the tar archive is empty", ErrNotImage)
	default:
		return nil, fmt.Errorf("%w: it has neither an oci-layout file with index.json (OCI image layout) nor a manifest.json (docker save)", ErrNotImage)
	}
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: give the image a name when saving it (docker save NAME:TAG, or an %s annotation in index.json)", ErrNoNames, AnnotationImageName)
	}
	return names, nil
}

func read(r io.Reader) (*contents, error) {
	c := &contents{files: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read tar: %v", ErrNotImage, err)
		}
		c.sawEntry = true
		name := path.Clean(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			// Docker archives may link one layer file to another.
			c.files[name] = true
			continue
		case tar.TypeReg:
		default:
			continue
		}
		c.files[name] = true
		switch name {
		case ocispec.ImageLayoutFile:
			c.layout = &ocispec.ImageLayout{}
			err = decode(tr, c.layout)
		case ocispec.ImageIndexFile:
			c.index = &ocispec.Index{}
			err = decode(tr, c.index)
		case dockerManifestFile:
			err = decode(tr, &c.docker)
			if err == nil && c.docker == nil {
				c.docker = []dockerManifest{}
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNotImage, name, err)
		}
	}
	// Drain what follows the end-of-archive marker, so the caller sees
	// a read error there too (a truncated upload).
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("read image tarball: %w", err)
	}
	return c, nil
}

func decode(r io.Reader, v any) error {
	return json.NewDecoder(io.LimitReader(r, maxJSON)).Decode(v)
}

func (c *contents) ociNames() ([]string, error) {
	if c.layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("%w: OCI layout version %q is not supported (want %s)", ErrNotImage, c.layout.Version, ocispec.ImageLayoutVersion)
	}
	if c.index == nil {
		return nil, fmt.Errorf("%w: the OCI layout has no index.json", ErrNotImage)
	}
	var names []string
	for _, m := range c.index.Manifests {
		if err := m.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: index.json: manifest digest %q: %v", ErrNotImage, m.Digest, err)
		}
		if blob := path.Join(ocispec.ImageBlobsDir, m.Digest.Algorithm().String(), m.Digest.Encoded()); !c.files[blob] {
			return nil, fmt.Errorf("%w: index.json names manifest %s, but the tarball has no %s", ErrNotImage, m.Digest, blob)
		}
		if name := ManifestName(m.Annotations); name != "" && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

func (c *contents) dockerNames() ([]string, error) {
	var names []string
	for _, m := range c.docker {
		for _, f := range append([]string{m.Config}, m.Layers...) {
			if !c.files[path.Clean(f)] {
				return nil, fmt.Errorf("%w: manifest.json names %q, which the tarball does not hold", ErrNotImage, f)
			}
		}
		for _, tag := range m.RepoTags {
			named, err := reference.ParseDockerRef(tag)
			if err != nil {
				return nil, fmt.Errorf("%w: manifest.json: tag %q: %v", ErrNotImage, tag, err)
			}
			if name := named.String(); !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return names, nil
}

// ManifestName is the name an index entry's annotations give the image:
// containerd's own annotation as it stands, else the OCI ref.name
// annotation through RefName.
func ManifestName(annotations map[string]string) string {
	if name := annotations[AnnotationImageName]; name != "" {
		return name
	}
	return RefName(annotations[ocispec.AnnotationRefName])
}

// RefName turns an org.opencontainers.image.ref.name annotation into an
// image name. A full reference ("example.com/web:1.0", "web:1.0") is
// normalised as Docker does ("docker.io/library/web:1.0"). A bare tag
// ("1.0", "latest"), which is what OCI suggests the annotation hold,
// names no repository and so gives "" (containerd would otherwise create
// an image literally named "latest").
func RefName(s string) string {
	if !strings.ContainsAny(s, "/:@") {
		return ""
	}
	named, err := reference.ParseDockerRef(s)
	if err != nil {
		return ""
	}
	return named.String()
}

// ValidDigest reports whether id is a sha256 digest ("sha256:<64 hex>"),
// the form image ids take.
func ValidDigest(id string) bool {
	d, err := digest.Parse(id)
	return err == nil && d.Algorithm() == digest.SHA256
}
