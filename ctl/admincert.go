package ctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

func newAdminCertCommand(c *cli) *cobra.Command {
	return groupCommand("admin-cert", "Issue, list and revoke operators' certificates",
		newAdminCertIssueCommand(c),
		newAdminCertListCommand(c),
		newAdminCertRevokeCommand(c),
	)
}

func newAdminCertIssueCommand(c *cli) *cobra.Command {
	var (
		out      string
		validity time.Duration
	)
	cmd := &cobra.Command{
		Use:   "issue [flags] NAME",
		Short: "Make admin credentials for shoalctl --host",
		Long: `Make a new key here, have the cluster sign it as an admin certificate named
NAME, and write ca.pem, cert.pem and key.pem (mode 0600) into --out, ready
for ` + "`shoalctl --host MANAGER --tls-dir DIR`" + `. The key never leaves this machine.

The managers accept an admin certificate only while the cluster records it:
` + "`shoalctl cluster admin-cert revoke`" + ` ends it at once. It lasts 30 days unless
--validity says otherwise (at most a year); issue a new one before it ends.`,
		Example: `  shoalctl cluster admin-cert issue --out ~/shoal-alice alice
  shoalctl cluster admin-cert issue --validity 24h --out /tmp/ci ci`,
		Args: exactArgs(1, "a NAME argument"),
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "directory to write ca.pem, cert.pem and key.pem into (required; must not hold credentials yet)")
	cmd.Flags().DurationVar(&validity, "validity", 0, "lifetime of the certificate (default 720h, at most 8760h)")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		name := args[0]
		if err := identity.ValidateAdminName(name); err != nil {
			return usageError{cmd: cmd, err: err}
		}
		if out == "" {
			return usageError{cmd: cmd, err: errors.New("--out is required: the directory to write the credentials into")}
		}
		if validity < 0 || validity > identity.MaxAdminValidity {
			return usageError{cmd: cmd, err: fmt.Errorf("--validity %v: want more than 0 and at most %v", validity, identity.MaxAdminValidity)}
		}
		for _, f := range []string{identity.CertFile, identity.KeyFile} {
			if _, err := os.Stat(filepath.Join(out, f)); !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%s already holds credentials (%s): pick another --out, or move them away first", out, f)
			}
		}
		keyPEM, csrPEM, err := identity.NewKeyAndCSR()
		if err != nil {
			return err
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		req := &api.IssueAdminCertificateRequest{Name: name, CsrPem: csrPEM}
		if validity > 0 {
			req.Validity = durationpb.New(validity)
		}
		resp, err := client.IssueAdminCertificate(cmd.Context(), req)
		if err != nil {
			return err
		}
		creds := identity.Credentials{CACertPEM: resp.GetCaCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}
		if err := identity.SaveCredentials(out, creds); err != nil {
			return fmt.Errorf("certificate %s was issued and recorded, but %w: revoke it with `shoalctl cluster admin-cert revoke %s`", resp.GetCertificate().GetSerial(), err, resp.GetCertificate().GetSerial())
		}
		rec := resp.GetCertificate()
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "Issued admin certificate %s (%s), valid until %s, into %s\n",
			rec.GetSerial(), rec.GetName(), rec.GetNotAfter().AsTime().UTC().Format(time.RFC3339), out)
		return err
	})
	return cmd
}

// adminCertRow is one admin certificate in `admin-cert ls`.
type adminCertRow struct {
	Serial   string
	Name     string
	Issued   time.Time
	NotAfter time.Time
}

func newAdminCertListCommand(c *cli) *cobra.Command {
	return listCommand(c, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the admin certificates the cluster accepts",
		Long: `List the admin certificates the cluster accepts (revoked and expired ones
are gone), by name.

--format TEMPLATE runs a Go template per certificate with the fields
.Serial .Name .Issued .NotAfter and the functions json, join, lower and upper.`,
		Args: noArgs,
	}, func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[adminCertRow], error) {
		resp, err := client.ListAdminCertificates(ctx, &api.ListAdminCertificatesRequest{})
		if err != nil {
			return listing[adminCertRow]{}, err
		}
		l := listing[adminCertRow]{
			columns: []column[adminCertRow]{
				{"SERIAL", func(r adminCertRow) string { return r.Serial }},
				{"NAME", func(r adminCertRow) string { return r.Name }},
				{"ISSUED", func(r adminCertRow) string { return r.Issued.UTC().Format(time.RFC3339) }},
				{"EXPIRES", func(r adminCertRow) string { return r.NotAfter.UTC().Format(time.RFC3339) }},
			},
			id: func(r adminCertRow) string { return r.Serial },
		}
		for _, rec := range resp.GetCertificates() {
			l.rows = append(l.rows, adminCertRow{Serial: rec.GetSerial(), Name: rec.GetName(), Issued: rec.GetIssuedAt().AsTime(), NotAfter: rec.GetNotAfter().AsTime()})
			l.objects = append(l.objects, rec)
		}
		return l, nil
	})
}

func newAdminCertRevokeCommand(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke SERIAL|NAME...",
		Short: "Revoke admin certificates",
		Long: `Revoke admin certificates by serial, unique serial prefix, or name (which
revokes every certificate of that name). Every call made with them is
refused from then on, on connections already open too. The local socket of
a manager stays admin whatever is revoked.`,
		Example: `  shoalctl cluster admin-cert revoke alice
  shoalctl cluster admin-cert revoke 3f2a9c`,
		Args: minArgs(1, "a SERIAL or NAME argument"),
	}
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		return eachArg(args, func(ref string) error {
			resp, err := client.RevokeAdminCertificate(cmd.Context(), &api.RevokeAdminCertificateRequest{Certificate: ref})
			if err != nil {
				return err
			}
			for _, rec := range resp.GetRevoked() {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", rec.GetSerial(), rec.GetName())
			}
			return nil
		})
	})
	return cmd
}
