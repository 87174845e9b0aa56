package ctl

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// The --pretty views of a service's mode (other than replicated),
// placement and resources, and of a node's resources. line and section
// are printPrettyService's writers.

func prettyOtherModes(line func(int, string, any), spec *api.ServiceSpec, c *api.ServiceCounts) {
	switch {
	case spec.GetGlobal() != nil:
		line(0, "Mode", "Global")
		line(1, "Tasks", fmt.Sprintf("%d (%d running)", c.GetDesired(), c.GetRunning()))
	case spec.GetReplicatedJob() != nil:
		j := spec.GetReplicatedJob()
		line(0, "Mode", "Replicated job")
		line(1, "Completions", fmt.Sprintf("%d (%d completed)", j.GetTotalCompletions(), c.GetCompleted()))
		line(1, "Max concurrent", j.GetMaxConcurrent())
	case spec.GetGlobalJob() != nil:
		line(0, "Mode", "Global job")
		line(1, "Completions", fmt.Sprintf("%d (%d completed)", c.GetCompletions(), c.GetCompleted()))
	}
}

func prettyPlacement(section func(string), line func(int, string, any), p *api.Placement) {
	if len(p.GetConstraints()) == 0 && len(p.GetPreferences()) == 0 && p.GetMaxReplicasPerNode() == 0 {
		return
	}
	section("Placement")
	if cs := p.GetConstraints(); len(cs) > 0 {
		line(1, "Constraints", strings.Join(cs, ", "))
	}
	if prefs := p.GetPreferences(); len(prefs) > 0 {
		var spread []string
		for _, pref := range prefs {
			spread = append(spread, "spread="+pref.GetSpread())
		}
		line(1, "Preferences", strings.Join(spread, ", "))
	}
	if n := p.GetMaxReplicasPerNode(); n > 0 {
		line(1, "Max replicas per node", n)
	}
}

func prettyResources(section func(string), line func(int, string, any), r *api.ResourceRequirements) {
	lim, res := r.GetLimits(), r.GetReservations()
	if lim.GetNanoCpus() == 0 && lim.GetMemoryBytes() == 0 && r.GetPidsLimit() == 0 && res.GetNanoCpus() == 0 && res.GetMemoryBytes() == 0 {
		return
	}
	section("Resources")
	if lim.GetNanoCpus() > 0 || lim.GetMemoryBytes() > 0 || r.GetPidsLimit() > 0 {
		line(1, "Limits", joinAmounts(lim, r.GetPidsLimit()))
	}
	if res.GetNanoCpus() > 0 || res.GetMemoryBytes() > 0 {
		line(1, "Reservations", joinAmounts(res, 0))
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
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 1, ' ', 0)
	line := func(indent int, key string, value any) {
		fmt.Fprintf(tw, "%s%s:\t%v\n", strings.Repeat(" ", indent), key, value)
	}
	line(0, "ID", n.GetId())
	line(0, "Hostname", d.GetHostname())
	line(0, "Role", strings.ToLower(enumWord(n.GetRole().String(), "NODE_ROLE_")))
	line(0, "Status", title(enumWord(n.GetStatus().GetState().String(), "NODE_STATE_")))
	line(0, "Availability", title(enumWord(n.GetSpec().GetAvailability().String(), "NODE_AVAILABILITY_")))
	if ms := managerStatus(n); ms != "" {
		line(0, "Manager status", ms)
	}
	line(0, "Platform", d.GetOs()+"/"+d.GetArch())
	line(0, "Engine", d.GetEngine())
	if labels := n.GetSpec().GetLabels(); len(labels) > 0 {
		fmt.Fprintf(tw, "Labels:\t\n")
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			fmt.Fprintf(tw, " %s=%s\t\n", k, labels[k])
		}
	}
	r := resp.GetReserved()
	fmt.Fprintf(tw, "Resources:\t\n")
	line(1, "CPUs", fmt.Sprintf("%s (%s reserved)", api.FormatNanoCPUs(d.GetNanoCpus()), api.FormatNanoCPUs(r.GetNanoCpus())))
	line(1, "Memory", fmt.Sprintf("%s (%s reserved)", api.FormatBytes(d.GetMemoryBytes()), api.FormatBytes(r.GetMemoryBytes())))
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeTrimmed(w, buf.String())
}
