package vm

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/internal/servicecheck"
	"github.com/shoal-project/shoal/internal/testimage"
)

// The VM tier's benchmarks (`make bench-vm`): the routing mesh with each
// load balancer backend against the task straight, and the backends'
// programming benchmarks on the VMs' kernel, in one run. Emulated VMs
// make absolute figures meaningless: the ratios are the result.

// Sizes of the mesh benchmark's runs.
const (
	benchRequests    = 400
	benchConcurrency = 8
	benchStreamBytes = 32 << 20
	benchRounds      = 2
	// benchService runs one replica on worker1 and is measured through
	// worker2, which has none: DNAT, VXLAN to worker1, masquerade.
	benchService = "bench"
	benchHTTP    = 8093
	benchEcho    = 8098
)

// BenchmarkMesh measures, on the 3-VM cluster, many short HTTP requests
// (each on a new connection) and one bulk TCP stream from the namespace
// (a) through worker2's published port with IPVS, (b) the same with
// nftables (shoald restarted with it), and (c) straight to the task's
// address, routed by worker1, in alternation with both so that drift hits
// all alike. Ratios are to (c), and IPVS to nftables.
func BenchmarkMesh(b *testing.B) {
	c := vmCluster(b)
	ctx := testContext(b)
	image, err := c.EchoImage(ctx)
	if err != nil {
		b.Fatal(err)
	}
	c.MustShoalctl(b, "service", "create", "--detach", "--name", benchService, "--constraint", "node.hostname==worker1",
		"--publish", fmt.Sprintf("%d:80", benchHTTP), "--publish", fmt.Sprintf("%d:7", benchEcho), image)
	var task string
	var subnet netip.Prefix
	for _, t := range c.converged(b, benchService, servicecheck.Want{Replicas: 1}) {
		p, err := netip.ParsePrefix(t.GetNetworks()[0].GetAddr())
		if err != nil {
			b.Fatal(err)
		}
		task, subnet = p.Addr().String(), p.Masked()
	}
	// The namespace reaches the ingress subnet through worker1, which
	// forwards: the baseline without the mesh.
	if _, err := c.host(ctx, nil, "ip", "-n", netnsName, "route", "replace", subnet.String(), "via", c.Nodes[1].Addr); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.host(context.Background(), nil, "ip", "-n", netnsName, "route", "del", subnet.String()) })
	via := c.Nodes[2].Addr

	type figures struct{ rps, p50, p99, mbs float64 }
	measure := func(httpTarget, streamAddr string) figures {
		rep, err := testimage.Load(ctx, testimage.LoadConfig{Target: httpTarget, Requests: benchRequests, Concurrency: benchConcurrency, Dial: c.Dial})
		if err != nil || rep.OK != benchRequests {
			b.Fatalf("%s: %d of %d requests: %v %v", httpTarget, rep.OK, benchRequests, err, rep.Errors)
		}
		var took time.Duration
		err = c.InNetNS(func() error {
			var err error
			took, err = testimage.Stream(ctx, streamAddr, benchStreamBytes)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return figures{
			rps: benchRequests / rep.Elapsed.Seconds(),
			p50: rep.P50.Seconds() * 1000, p99: rep.P99.Seconds() * 1000,
			mbs: benchStreamBytes / (1 << 20) / took.Seconds(),
		}
	}
	var results = map[string]figures{}
	add := func(name string, f figures) {
		r := results[name]
		results[name] = figures{r.rps + f.rps/benchRounds, r.p50 + f.p50/benchRounds, r.p99 + f.p99/benchRounds, r.mbs + f.mbs/benchRounds}
	}
	for _, backend := range []string{"ipvs", "nftables"} {
		c.useLBBackend(b, backend)
		mesh, direct := fmt.Sprintf("http://%s:%d", via, benchHTTP), fmt.Sprintf("http://%s:80", task)
		// Warm both paths.
		measure(mesh, fmt.Sprintf("%s:%d", via, benchEcho))
		measure(direct, task+":7")
		for range benchRounds {
			add(backend, measure(mesh, fmt.Sprintf("%s:%d", via, benchEcho)))
			add("direct", measure(direct, task+":7"))
		}
	}
	// The direct path was measured twice as often.
	d := results["direct"]
	d = figures{d.rps / 2, d.p50 / 2, d.p99 / 2, d.mbs / 2}
	for _, name := range []string{"ipvs", "nftables"} {
		f := results[name]
		b.ReportMetric(f.rps, name+"-req/s")
		b.ReportMetric(f.p50, name+"-p50-ms")
		b.ReportMetric(f.p99, name+"-p99-ms")
		b.ReportMetric(f.mbs, name+"-stream-MB/s")
		b.ReportMetric(f.rps/d.rps, name+"/direct-req")
		b.ReportMetric(f.mbs/d.mbs, name+"/direct-stream")
	}
	b.ReportMetric(d.rps, "direct-req/s")
	b.ReportMetric(d.p50, "direct-p50-ms")
	b.ReportMetric(d.p99, "direct-p99-ms")
	b.ReportMetric(d.mbs, "direct-stream-MB/s")
	b.ReportMetric(results["ipvs"].rps/results["nftables"].rps, "ipvs/nftables-req")
	b.ReportMetric(results["ipvs"].mbs/results["nftables"].mbs, "ipvs/nftables-stream")
}

// lbBenchmarks are the load balancer backends' programming benchmarks:
// 1,000 frontends × 10 backends into an empty namespace, and one backend
// change among them.
var lbBenchmarks = []struct{ name, metric string }{
	{"Program1000x10", "program-1000x10"},
	{"OneChange1000", "one-change-1000"},
}

// BenchmarkLBProgramming runs the nft and IPVS backends' programming
// benchmarks (the same state under the same names) in one VM, one after
// the other, and reports their ms/op and IPVS / nftables.
func BenchmarkLBProgramming(b *testing.B) {
	c := vmCluster(b)
	ctx := testContext(b)
	const node = "worker1"
	if err := c.installTests(ctx, node, ipvsTests, nftTests); err != nil {
		b.Fatal(err)
	}
	ms := map[string]map[string]float64{}
	for _, bin := range []testBinary{nftTests, ipvsTests} {
		var names []string
		for _, lb := range lbBenchmarks {
			names = append(names, lb.name)
		}
		out, err := c.runTests(ctx, node, bin, "-test.run", "^$", "-test.bench", strings.Join(names, "|"), "-test.benchtime", "3x", "-test.timeout", kernelSuiteTimeout.String())
		if err != nil {
			b.Fatalf("%s.test benchmarks on %s: %v\n%s", bin.name, node, err, out)
		}
		b.Logf("%s.test on %s:\n%s", bin.name, node, out)
		if ms[bin.name], err = msPerOp(out); err != nil {
			b.Fatalf("%s.test: %v\n%s", bin.name, err, out)
		}
	}
	for _, lb := range lbBenchmarks {
		nftMS, ipvsMS := ms[nftTests.name][lb.name], ms[ipvsTests.name][lb.name]
		b.ReportMetric(nftMS, "nft-"+lb.metric+"-ms")
		b.ReportMetric(ipvsMS, "ipvs-"+lb.metric+"-ms")
		b.ReportMetric(ipvsMS/nftMS, "ipvs/nft-"+lb.metric)
	}
}

var msPerOpLine = regexp.MustCompile(`(?m)^Benchmark(\w+)\S*\s+\d+\s.*?\s([0-9.]+) ms/op`)

// msPerOp reads the ms/op metric (lbtest.ReportMS) of every benchmark
// in a test binary's output, by name.
func msPerOp(out string) (map[string]float64, error) {
	ms := map[string]float64{}
	for _, m := range msPerOpLine.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, err
		}
		ms[m[1]] = v
	}
	for _, lb := range lbBenchmarks {
		if _, ok := ms[lb.name]; !ok {
			return nil, fmt.Errorf("no ms/op for Benchmark%s", lb.name)
		}
	}
	return ms, nil
}

func TestMSPerOp(t *testing.T) {
	out := "goos: linux\nBenchmarkProgram1000x10-2   \t       3\t 412345678 ns/op\t       412.3 ms/op\nBenchmarkOneChange1000 \t 3\t 4000000 ns/op\t 4.000 ms/op\nPASS\n"
	got, err := msPerOp(out)
	if err != nil {
		t.Fatal(err)
	}
	if got["Program1000x10"] != 412.3 || got["OneChange1000"] != 4 {
		t.Errorf("msPerOp = %v", got)
	}
	if _, err := msPerOp("BenchmarkProgram1000x10-2 3 1 ns/op 1 ms/op\n"); err == nil {
		t.Error("a missing benchmark was not reported")
	}
}
