// Command recorders drives real client code (Telegraf's outputs.influxdb_v2
// plugin and Prometheus's remote-write client) against a local httptest
// server and records exactly what they send, as test fixtures for Runnel's
// collector. Run from this directory: `go run .`
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/influxdata/telegraf"
	tgconfig "github.com/influxdata/telegraf/config"
	"github.com/influxdata/telegraf/metric"
	_ "github.com/influxdata/telegraf/plugins/outputs/influxdb_v2" // registers outputs.influxdb_v2
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/util/compression"
)

// Output locations, relative to e2e/recorders.
var (
	telegrafDir   = filepath.Join("..", "tests", "data", "telegraf")
	prometheusDir = filepath.Join("..", "tests", "data", "prometheus")
)

type recorded struct {
	Method string
	Path   string // path with raw query
	Host   string
	Header http.Header
	Body   []byte // raw bytes as received (still compressed)
}

type recorder struct {
	mu       sync.Mutex
	requests []recorded
	status   int
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body) // net/http does not decode Content-Encoding on the server side
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := req.Header.Clone()
	// net/http's server moves Host and Transfer-Encoding out of Header; put
	// them back so the recording shows every header that was on the wire.
	if len(req.TransferEncoding) > 0 {
		h.Set("Transfer-Encoding", strings.Join(req.TransferEncoding, ", "))
	}
	r.mu.Lock()
	r.requests = append(r.requests, recorded{
		Method: req.Method,
		Path:   req.URL.RequestURI(),
		Host:   req.Host,
		Header: h,
		Body:   body,
	})
	r.mu.Unlock()
	w.WriteHeader(r.status)
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.requests...)
}

// headerMap flattens headers into name -> value (canonical names; multiple
// values joined with ", ", which does not happen for these clients), plus Host.
func headerMap(r recorded) map[string]string {
	out := make(map[string]string, len(r.Header)+1)
	for k, v := range r.Header {
		out[k] = strings.Join(v, ", ")
	}
	out["Host"] = r.Host
	return out
}

// startServer starts an httptest server on a fixed loopback port (so the
// recorded Host header is stable between regenerations), falling back to a
// random port if that one is taken.
func startServer(h http.Handler, addr string) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	if l, err := net.Listen("tcp", addr); err == nil {
		srv.Listener.Close()
		srv.Listener = l
	} else {
		log.Printf("warning: %s unavailable (%v); using a random port, Host header will differ", addr, err)
	}
	srv.Start()
	return srv
}

func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "unknown"
}

// writeRecording saves a recorded request as dir/name.body (the body as
// received) and dir/name.request.json (method, path, headers, and the version
// of the client module under versionKey).
func writeRecording(dir, name string, r recorded, versionKey, module string) {
	must(os.WriteFile(filepath.Join(dir, name+".body"), r.Body, 0o644))
	writeJSON(filepath.Join(dir, name+".request.json"), map[string]any{
		"method":   r.Method,
		"path":     r.Path,
		"headers":  headerMap(r),
		versionKey: moduleVersion(module),
	})
}

func writeJSON(path string, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep "&" in query strings readable
	enc.SetIndent("", "  ")
	must(enc.Encode(v))
	must(os.WriteFile(path, buf.Bytes(), 0o644))
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() {
	must(os.MkdirAll(telegrafDir, 0o755))
	must(os.MkdirAll(prometheusDir, 0o755))
	recordTelegraf()
	recordPrometheus()
}

// ---------------------------------------------------------------- Telegraf

func recordTelegraf() {
	rec := &recorder{status: http.StatusNoContent} // InfluxDB 2 answers 204 on success
	srv := startServer(rec, "127.0.0.1:18086")
	defer srv.Close()

	// Configure the plugin exactly as telegraf.conf would, through Telegraf's
	// own config loader (defaults applied by the plugin registry + Init).
	conf := fmt.Sprintf(`
[agent]
  omit_hostname = true

[[outputs.influxdb_v2]]
  urls = [%q]
  token = "fleet-token"
  organization = "fleet"
  bucket = "telegraf"
`, srv.URL)
	c := tgconfig.NewConfig()
	must(c.LoadConfigData([]byte(conf), tgconfig.EmptySourcePath))
	if len(c.Outputs) != 1 {
		log.Fatalf("expected 1 output, got %d", len(c.Outputs))
	}
	ro := c.Outputs[0]
	must(ro.Init())
	out := ro.Output

	T := time.Unix(1764000000, 0).UTC()
	// Fields are added one by one so their order is deterministic: building a
	// metric from a map (metric.New / acc.AddFields, as most inputs do) gives
	// Go's randomized map iteration order.
	type kv struct {
		k string
		v interface{}
	}
	mk := func(name string, tags map[string]string, tm time.Time, fields ...kv) telegraf.Metric {
		m := metric.New(name, tags, nil, tm) // tags are sorted by key by metric.New
		for _, f := range fields {
			m.AddField(f.k, f.v)
		}
		return m
	}
	metrics := []telegraf.Metric{
		mk("cpu", map[string]string{"cpu": "cpu-total", "host": "edge-7"}, T,
			kv{"usage_idle", 97.2}, kv{"usage_system", 1.1}, kv{"usage_user", 1.7}),
		mk("mem", map[string]string{"host": "edge-7"}, T,
			kv{"available", int64(6012345344)}, kv{"used_percent", 24.9}),
		mk("system", map[string]string{"host": "edge-7"}, T,
			kv{"load1", 0.42}, kv{"n_cpus", int64(2)}, kv{"uptime_format", "3 days,  2:11"}),
		mk("net", map[string]string{"host": "edge-7", "interface": "eth0"}, T,
			kv{"bytes_recv", uint64(123456789)}, kv{"err_in", int64(0)}),
		mk("disk", map[string]string{"device": "sda1", "fstype": "ext4", "host": "edge-7", "mode": "rw", "path": "/"}, T,
			kv{"used_percent", 41.5}),
		mk("diskio", map[string]string{"host": "edge-7", "name": "sda"}, T.Add(10*time.Second),
			kv{"io_time", int64(1234)}),
	}

	must(out.Connect())
	must(out.Write(metrics))
	must(out.Close())

	reqs := rec.all()
	if len(reqs) != 1 {
		log.Fatalf("telegraf: expected exactly 1 request, got %d", len(reqs))
	}
	r := reqs[0]
	if ce := r.Header.Get("Content-Encoding"); ce != "gzip" {
		log.Fatalf("telegraf: expected Content-Encoding gzip, got %q", ce)
	}
	zr, err := gzip.NewReader(bytes.NewReader(r.Body))
	must(err)
	plain, err := io.ReadAll(zr)
	must(err)

	writeRecording(telegrafDir, "influxdb_v2", r, "telegraf_version", "github.com/influxdata/telegraf")
	must(os.WriteFile(filepath.Join(telegrafDir, "influxdb_v2.body.txt"), plain, 0o644))
	fmt.Printf("telegraf: %s %s (%d bytes gzip, %d bytes plain)\n", r.Method, r.Path, len(r.Body), len(plain))
}

// -------------------------------------------------------------- Prometheus

func recordPrometheus() {
	rec := &recorder{status: http.StatusNoContent}
	srv := startServer(rec, "127.0.0.1:19090")
	defer srv.Close()

	const MS int64 = 1764000000000
	// Labels sorted by name, as Prometheus's labels.Labels always are.
	ts := []prompb.TimeSeries{
		{
			Labels: []prompb.Label{
				{Name: "__name__", Value: "up"},
				{Name: "instance", Value: "edge-7:9100"},
				{Name: "job", Value: "node"},
			},
			Samples: []prompb.Sample{{Value: 1, Timestamp: MS - 15000}, {Value: 1, Timestamp: MS}},
		},
		{
			Labels: []prompb.Label{
				{Name: "__name__", Value: "node_load1"},
				{Name: "instance", Value: "edge-7:9100"},
				{Name: "job", Value: "node"},
			},
			Samples: []prompb.Sample{{Value: 0.42, Timestamp: MS}},
		},
		{
			Labels: []prompb.Label{
				{Name: "__name__", Value: "http_request_duration_seconds_bucket"},
				{Name: "job", Value: "api"},
				{Name: "le", Value: "+Inf"},
			},
			Samples: []prompb.Sample{{Value: 1027, Timestamp: MS}},
		},
		{
			Labels: []prompb.Label{
				{Name: "__name__", Value: "node_gone"},
				{Name: "job", Value: "node"},
			},
			Samples: []prompb.Sample{{Value: math.Float64frombits(value.StaleNaN), Timestamp: MS}},
		},
	}
	for _, s := range ts {
		if !sort.SliceIsSorted(s.Labels, func(i, j int) bool { return s.Labels[i].Name < s.Labels[j].Name }) {
			log.Fatalf("labels not sorted: %v", s.Labels)
		}
	}

	// Same steps as storage/remote's (unexported) buildWriteRequest for
	// remote write 1.0: gogo proto.Buffer marshal, then snappy block
	// compression via util/compression.
	pBuf := proto.NewBuffer(nil)
	must(pBuf.Marshal(&prompb.WriteRequest{Timeseries: ts}))
	raw := append([]byte(nil), pBuf.Bytes()...)
	payload, err := compression.Encode(compression.Snappy, raw, nil)
	must(err)

	// Configure the client exactly as a prometheus.yml remote_write section
	// would (defaults from Prometheus's config loader), the way
	// storage/remote/write.go builds it.
	cfg, err := promconfig.Load(fmt.Sprintf("remote_write:\n  - url: %q\n", srv.URL+"/api/v1/write"), nil)
	must(err)
	rw := cfg.RemoteWriteConfigs[0]
	client, err := remote.NewWriteClient("recorder", &remote.ClientConfig{
		URL:              rw.URL,
		WriteProtoMsg:    rw.ProtobufMessage,
		Timeout:          rw.RemoteTimeout,
		HTTPClientConfig: rw.HTTPClientConfig,
		SigV4Config:      rw.SigV4Config,
		AzureADConfig:    rw.AzureADConfig,
		GoogleIAMConfig:  rw.GoogleIAMConfig,
		Headers:          rw.Headers,
		RetryOnRateLimit: rw.QueueConfig.RetryOnRateLimit,
		RoundRobinDNS:    rw.RoundRobinDNS,
	})
	must(err)
	_, err = client.Store(context.Background(), payload, 0)
	must(err)

	reqs := rec.all()
	if len(reqs) != 1 {
		log.Fatalf("prometheus: expected exactly 1 request, got %d", len(reqs))
	}
	r := reqs[0]
	if !bytes.Equal(r.Body, payload) {
		log.Fatal("prometheus: received body differs from built payload")
	}
	// Sanity: decode back.
	dec, err := compression.Decode(compression.Snappy, r.Body, nil)
	must(err)
	var back prompb.WriteRequest
	must(proto.Unmarshal(dec, &back))
	if len(back.Timeseries) != 4 || !value.IsStaleNaN(back.Timeseries[3].Samples[0].Value) {
		log.Fatal("prometheus: round trip mismatch")
	}

	writeRecording(prometheusDir, "remote_write_v1", r, "prometheus_version", "github.com/prometheus/prometheus")

	var sb strings.Builder
	fmt.Fprintf(&sb, "Prometheus remote write 1.0 request body (remote_write_v1.body)\n")
	fmt.Fprintf(&sb, "Encoding: prompb.WriteRequest protobuf, snappy block format (not framed).\n")
	fmt.Fprintf(&sb, "Sizes: %d bytes protobuf, %d bytes snappy-compressed.\n", len(raw), len(r.Body))
	fmt.Fprintf(&sb, "Built with github.com/prometheus/prometheus %s (prompb + util/compression),\n", moduleVersion("github.com/prometheus/prometheus"))
	fmt.Fprintf(&sb, "sent by storage/remote's write client (Client.Store); see remote_write_v1.request.json.\n")
	fmt.Fprintf(&sb, "No metadata, exemplars or histograms. Timestamps are milliseconds since the Unix epoch.\n")
	fmt.Fprintf(&sb, "MS = %d = %s\n\n", MS, time.UnixMilli(MS).UTC().Format(time.RFC3339))
	for i, s := range back.Timeseries {
		var ls []string
		for _, l := range s.Labels {
			ls = append(ls, fmt.Sprintf("%s=%q", l.Name, l.Value))
		}
		fmt.Fprintf(&sb, "series %d: {%s}\n", i+1, strings.Join(ls, ", "))
		for _, smp := range s.Samples {
			v := fmt.Sprintf("%g", smp.Value)
			if value.IsStaleNaN(smp.Value) {
				v = fmt.Sprintf("StaleNaN (float64 bits 0x%016x, Prometheus staleness marker)", math.Float64bits(smp.Value))
			}
			fmt.Fprintf(&sb, "  sample value=%s timestamp=%d (MS%+d)\n", v, smp.Timestamp, smp.Timestamp-MS)
		}
	}
	must(os.WriteFile(filepath.Join(prometheusDir, "remote_write_v1.txt"), []byte(sb.String()), 0o644))
	fmt.Printf("prometheus: %s %s (%d bytes snappy, %d bytes protobuf)\n", r.Method, r.Path, len(r.Body), len(raw))
}
