package ctl

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// prettyTable writes the --pretty views: "key: value" lines, indented by
// level. Every line goes through one tabwriter, section headers too, so
// that all values line up in one column.
type prettyTable struct {
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newPrettyTable() *prettyTable {
	p := &prettyTable{}
	p.tw = tabwriter.NewWriter(&p.buf, 0, 0, 1, ' ', 0)
	return p
}

func (p *prettyTable) line(indent int, key string, value any) {
	fmt.Fprintf(p.tw, "%s%s:\t%v\n", strings.Repeat(" ", indent), key, value)
}

func (p *prettyTable) section(key string) { fmt.Fprintf(p.tw, "%s:\t\n", key) }

// labels is a Labels section, KEY=VALUE lines sorted by key; nothing for
// no labels.
func (p *prettyTable) labels(labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	p.section("Labels")
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(p.tw, " %s=%s\t\n", k, labels[k])
	}
}

func (p *prettyTable) writeTo(w io.Writer) error {
	if err := p.tw.Flush(); err != nil {
		return err
	}
	return writeTrimmed(w, p.buf.String())
}

// printEachPretty prints found one after the other, a blank line between.
func printEachPretty[R any](w io.Writer, found []R, print func(io.Writer, R) error) error {
	for i, r := range found {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := print(w, r); err != nil {
			return err
		}
	}
	return nil
}

// otherModes is the Mode section of a service that is not replicated.
func (p *prettyTable) otherModes(spec *api.ServiceSpec, c *api.ServiceCounts) {
	switch {
	case spec.GetGlobal() != nil:
		p.line(0, "Mode", "Global")
		p.line(1, "Tasks", fmt.Sprintf("%d (%d running)", c.GetDesired(), c.GetRunning()))
	case spec.GetReplicatedJob() != nil:
		j := spec.GetReplicatedJob()
		p.line(0, "Mode", "Replicated job")
		p.line(1, "Completions", fmt.Sprintf("%d (%d completed)", j.GetTotalCompletions(), c.GetCompleted()))
		p.line(1, "Max concurrent", j.GetMaxConcurrent())
	case spec.GetGlobalJob() != nil:
		p.line(0, "Mode", "Global job")
		p.line(1, "Completions", fmt.Sprintf("%d (%d completed)", c.GetCompletions(), c.GetCompleted()))
	}
}

func (p *prettyTable) placement(pl *api.Placement) {
	if len(pl.GetConstraints()) == 0 && len(pl.GetPreferences()) == 0 && pl.GetMaxReplicasPerNode() == 0 {
		return
	}
	p.section("Placement")
	if cs := pl.GetConstraints(); len(cs) > 0 {
		p.line(1, "Constraints", strings.Join(cs, ", "))
	}
	if prefs := pl.GetPreferences(); len(prefs) > 0 {
		var spread []string
		for _, pref := range prefs {
			spread = append(spread, "spread="+pref.GetSpread())
		}
		p.line(1, "Preferences", strings.Join(spread, ", "))
	}
	if n := pl.GetMaxReplicasPerNode(); n > 0 {
		p.line(1, "Max replicas per node", n)
	}
}

func (p *prettyTable) resources(r *api.ResourceRequirements) {
	lim, res := r.GetLimits(), r.GetReservations()
	limited := lim.GetNanoCpus() > 0 || lim.GetMemoryBytes() > 0 || r.GetPidsLimit() > 0
	reserved := res.GetNanoCpus() > 0 || res.GetMemoryBytes() > 0
	if !limited && !reserved {
		return
	}
	p.section("Resources")
	if limited {
		p.line(1, "Limits", joinAmounts(lim, r.GetPidsLimit()))
	}
	if reserved {
		p.line(1, "Reservations", joinAmounts(res, 0))
	}
}

// joinAmounts words resources: "0.5 CPUs, 512MiB memory, 100 processes".
func joinAmounts(r *api.Resources, pids int64) string {
	var parts []string
	if c := r.GetNanoCpus(); c > 0 {
		parts = append(parts, api.FormatNanoCPUs(c)+" CPUs")
	}
	if m := r.GetMemoryBytes(); m > 0 {
		parts = append(parts, api.FormatBytes(m)+" memory")
	}
	if pids > 0 {
		parts = append(parts, fmt.Sprintf("%d processes", pids))
	}
	return strings.Join(parts, ", ")
}

// printPrettyNode is `node inspect --pretty`: who the node is, and its
// capacity with what the tasks on it reserve.
func printPrettyNode(w io.Writer, resp *api.GetNodeResponse) error {
	n := resp.GetNode()
	d := n.GetDescription()
	p := newPrettyTable()
	p.line(0, "ID", n.GetId())
	p.line(0, "Hostname", d.GetHostname())
	p.line(0, "Role", strings.ToLower(enumWord(n.GetRole().String(), "NODE_ROLE_")))
	p.line(0, "Status", title(enumWord(n.GetStatus().GetState().String(), "NODE_STATE_")))
	p.line(0, "Availability", title(enumWord(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_")))
	if ms := managerStatus(n); ms != "" {
		p.line(0, "Manager status", ms)
	}
	p.line(0, "Platform", d.GetOs()+"/"+d.GetArch())
	p.line(0, "Engine", d.GetEngine())
	// Shown as wg(8) shows keys; a node without one is why tasks of
	// encrypted networks stay pending there.
	if k := d.GetWireguardKey(); len(k) > 0 {
		p.line(0, "WireGuard key", base64.StdEncoding.EncodeToString(k))
	} else {
		p.line(0, "WireGuard key", "none (tasks of encrypted networks do not run here)")
	}
	p.labels(n.GetSpec().GetLabels())
	r := resp.GetReserved()
	p.section("Resources")
	p.line(1, "CPUs", fmt.Sprintf("%s (%s reserved)", api.FormatNanoCPUs(d.GetNanoCpus()), api.FormatNanoCPUs(r.GetNanoCpus())))
	p.line(1, "Memory", fmt.Sprintf("%s (%s reserved)", api.FormatBytes(d.GetMemoryBytes()), api.FormatBytes(r.GetMemoryBytes())))
	return p.writeTo(w)
}
