package ctl

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
)

// adminCertControl is a fake control API that signs admin CSRs with a real
// CA, keeps the records, and revokes by name.
type adminCertControl struct {
	*fakeControl
	root    *identity.RootCA
	records []*api.AdminCertificate
	reqs    []*api.IssueAdminCertificateRequest
}

func (f *adminCertControl) IssueAdminCertificate(_ context.Context, req *api.IssueAdminCertificateRequest, _ ...grpc.CallOption) (*api.IssueAdminCertificateResponse, error) {
	f.reqs = append(f.reqs, req)
	certPEM, cert, err := f.root.IssueAdminCSR(req.GetCsrPem(), req.GetName(), req.GetValidity().AsDuration())
	if err != nil {
		return nil, err
	}
	rec := identity.AdminRecord(cert)
	f.records = append(f.records, rec)
	return &api.IssueAdminCertificateResponse{CertPem: certPEM, CaCertPem: f.root.CertPEM, Certificate: rec}, nil
}

func (f *adminCertControl) ListAdminCertificates(context.Context, *api.ListAdminCertificatesRequest, ...grpc.CallOption) (*api.ListAdminCertificatesResponse, error) {
	return &api.ListAdminCertificatesResponse{Certificates: f.records}, nil
}

func (f *adminCertControl) RevokeAdminCertificate(_ context.Context, req *api.RevokeAdminCertificateRequest, _ ...grpc.CallOption) (*api.RevokeAdminCertificateResponse, error) {
	var kept, gone []*api.AdminCertificate
	for _, r := range f.records {
		if r.GetName() == req.GetCertificate() {
			gone = append(gone, r)
		} else {
			kept = append(kept, r)
		}
	}
	f.records = kept
	return &api.RevokeAdminCertificateResponse{Revoked: gone}, nil
}

func TestAdminCertCommands(t *testing.T) {
	_, root := identitytest.NewCA(t, "c1")
	f := &adminCertControl{fakeControl: &fakeControl{}, root: root}
	e := testEnv(f.fakeControl)
	e.connect = func(context.Context, targets) (api.ControlClient, io.Closer, error) { return f, nopCloser{}, nil }
	dir := filepath.Join(t.TempDir(), "alice")

	out, err := runWith(t, e, "cluster", "admin-cert", "issue", "--validity", "48h", "--out", dir, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Issued admin certificate ") || !strings.Contains(out, "(alice)") {
		t.Errorf("issue printed %q", out)
	}
	creds, err := identity.LoadCredentials(dir)
	if err != nil {
		t.Fatalf("issue wrote unusable credentials: %v", err)
	}
	id, _ := creds.Identity()
	if id.Role != identity.RoleAdmin || id.NodeID != "alice" {
		t.Errorf("issued identity %v", id)
	}
	for _, name := range []string{identity.CAFile, identity.CertFile, identity.KeyFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", name, err, st.Mode().Perm())
		}
	}
	if len(f.reqs) != 1 || strings.Contains(string(f.reqs[0].GetCsrPem()), "PRIVATE KEY") || f.reqs[0].GetValidity().AsDuration() != 48*time.Hour {
		t.Errorf("request %v: want a CSR only and the validity asked for", f.reqs)
	}
	// Never over credentials already there.
	if _, err := runWith(t, e, "cluster", "admin-cert", "issue", "--out", dir, "alice"); err == nil || !strings.Contains(err.Error(), "already holds credentials") {
		t.Errorf("issue into a used directory: %v", err)
	}
	if _, err := runWith(t, e, "cluster", "admin-cert", "issue", "--out", t.TempDir(), "bad/name"); err == nil || len(f.reqs) != 1 {
		t.Errorf("bad name: %v, %d requests", err, len(f.reqs))
	}

	f.records[0].IssuedAt = timestamppb.New(fixedNow)
	f.records[0].NotAfter = timestamppb.New(fixedNow.Add(48 * time.Hour))
	out, err = runWith(t, e, "cluster", "admin-cert", "ls")
	if err != nil {
		t.Fatal(err)
	}
	want := "SERIAL   NAME    ISSUED                 EXPIRES\n" + id.Serial + "   alice   2026-03-01T12:00:00Z   2026-03-03T12:00:00Z\n"
	if !strings.Contains(out, "alice   2026-03-01T12:00:00Z   2026-03-03T12:00:00Z") || !strings.HasPrefix(out, "SERIAL") {
		t.Errorf("ls printed\n%s\nwant like\n%s", out, want)
	}
	out, err = runWith(t, e, "cluster", "admin-cert", "revoke", "alice")
	if err != nil || out != id.Serial+" alice\n" {
		t.Errorf("revoke: %q, %v", out, err)
	}
}
