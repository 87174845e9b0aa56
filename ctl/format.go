package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"text/template"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// This file is the one place where shoalctl decides how things are
// printed. List commands describe their rows (listing) and inspect
// commands hand over their objects; the user's --format, -q and --no-trunc
// are applied here the same way for all of them.

// outputFlags are the output flags of a list command.
type outputFlags struct {
	format  string
	quiet   bool
	noTrunc bool
}

func (o *outputFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.format, "format", "", "print as \"table\" (default), \"json\" (one object per line) or a Go template run per row")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print only IDs")
	fs.BoolVar(&o.noTrunc, "no-trunc", false, "do not truncate IDs and errors")
}

// column is one table column: its header and its cell for a row.
type column[R any] struct {
	header string
	cell   func(R) string
}

// listing is what a list command prints. Rows are what tables and
// templates show; objects, parallel to rows, are what --format json shows.
type listing[R any] struct {
	columns []column[R]
	rows    []R
	objects []proto.Message
	id      func(R) string
}

// listPrinter prints listings in the format the user asked for. It is made
// before any RPC so that a bad template is reported without a server.
type listPrinter struct {
	flags outputFlags
	tmpl  *template.Template
}

func newListPrinter(o outputFlags) (*listPrinter, error) {
	p := &listPrinter{flags: o}
	switch o.format {
	case "", "table", "json":
	default:
		t, err := parseTemplate(o.format)
		if err != nil {
			return nil, err
		}
		p.tmpl = t
	}
	return p, nil
}

// shortID is an id as the user asked to see it.
func (p *listPrinter) shortID(id string) string {
	if p.flags.noTrunc || len(id) <= shortIDLen {
		return id
	}
	return id[:shortIDLen]
}

// shortIDLen is how much of an id tables show, as Docker does: 12
// characters of a random id are unique in any cluster of sane size, and
// the API accepts unique prefixes.
const shortIDLen = 12

func printList[R any](w io.Writer, p *listPrinter, l listing[R]) error {
	switch {
	case p.flags.quiet:
		for _, r := range l.rows {
			if _, err := fmt.Fprintln(w, l.id(r)); err != nil {
				return err
			}
		}
		return nil
	case p.tmpl != nil:
		return executeEach(w, p.tmpl, l.rows)
	case p.flags.format == "json":
		for _, m := range l.objects {
			b, err := marshalJSON(m)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
				return err
			}
		}
		return nil
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	headers := make([]string, len(l.columns))
	for i, c := range l.columns {
		headers[i] = c.header
	}
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, r := range l.rows {
		cells := make([]string, len(l.columns))
		for i, c := range l.columns {
			cells[i] = c.cell(r)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeTrimmed(w, buf.String())
}

// writeTrimmed writes text without the padding tabwriter leaves at the end
// of lines whose last cells are empty.
func writeTrimmed(w io.Writer, text string) error {
	lines := strings.SplitAfter(text, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(strings.TrimSuffix(l, "\n"), " ")
		if strings.HasSuffix(l, "\n") {
			lines[i] += "\n"
		}
	}
	_, err := io.WriteString(w, strings.Join(lines, ""))
	return err
}

// printObjects prints what inspect commands print: a JSON array of the
// objects, or a template run over each object (the api Go type, so fields
// are {{.Id}}, {{.Spec.Name}}).
func printObjects[M proto.Message](w io.Writer, format string, objects []M) error {
	if format != "" && format != "json" {
		t, err := parseTemplate(format)
		if err != nil {
			return err
		}
		return executeEach(w, t, objects)
	}
	var buf bytes.Buffer
	buf.WriteString("[")
	for i, m := range objects {
		if i > 0 {
			buf.WriteString(",")
		}
		b, err := marshalJSON(m)
		if err != nil {
			return err
		}
		buf.Write(b)
	}
	buf.WriteString("]")
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "    "); err != nil {
		return fmt.Errorf("indent json: %w", err)
	}
	out.WriteString("\n")
	_, err := w.Write(out.Bytes())
	return err
}

// marshalJSON is protojson without its deliberately unstable whitespace, so
// output is the same from run to run (and golden files hold).
func marshalJSON(m proto.Message) ([]byte, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s as json: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return nil, fmt.Errorf("compact json: %w", err)
	}
	return out.Bytes(), nil
}

// templateFuncs are available in every --format template.
var templateFuncs = template.FuncMap{
	// json prints a value as JSON; protobuf messages as protojson.
	"json": func(v any) (string, error) {
		if m, ok := v.(proto.Message); ok {
			b, err := marshalJSON(m)
			return string(b), err
		}
		b, err := json.Marshal(v)
		return string(b), err
	},
	"join":  strings.Join,
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
}

func parseTemplate(format string) (*template.Template, error) {
	t, err := template.New("format").Funcs(templateFuncs).Option("missingkey=error").Parse(format)
	if err != nil {
		return nil, fmt.Errorf("invalid --format template: %w", err)
	}
	return t, nil
}

// executeEach runs t over every item, one line each.
func executeEach[T any](w io.Writer, t *template.Template, items []T) error {
	for _, it := range items {
		var buf bytes.Buffer
		if err := t.Execute(&buf, it); err != nil {
			return fmt.Errorf("run --format template: %w", err)
		}
		buf.WriteString("\n")
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

// ellipsis shortens s to n runes, marking the cut.
func ellipsis(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// title is an enum word as tables show it: "Running", "Drain".
func title(word string) string {
	word = strings.ToLower(word)
	if word == "" {
		return ""
	}
	return strings.ToUpper(word[:1]) + word[1:]
}

// enumWord is an enum value without its prefix: "READY" from NODE_STATE_READY.
func enumWord(name, prefix string) string {
	w := strings.TrimPrefix(name, prefix)
	if w == "UNSPECIFIED" {
		return ""
	}
	return strings.ReplaceAll(w, "_", "-")
}
