package bundle_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/bundle/bundletest"
)

func TestLoadStats(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	bundletest.Write(t, dir, bundletest.Options{Overflows: 7, Connects: 100, Complete: true})
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Meta.Complete || len(b.Series["listen"]) != 10 || len(b.Series["listen"][0].Rows) != 1 {
		t.Fatalf("meta %+v, %d listen intervals", b.Meta, len(b.Series["listen"]))
	}
	got := map[string]bundle.Stat{}
	for _, s := range b.Stats() {
		got[s.ID()] = s
	}
	for id, want := range map[string]float64{
		"listen.listen_overflows": 70, "ports.connects": 1000, "ports.ports_in_use": 20,
		"sched.runq_p99_us": 1000, "sched.involuntary_per_s": 50,
	} {
		if v := got[id].Value(); v != want {
			t.Errorf("%s = %g, want %g", id, v, want)
		}
	}
	if s := got["ports.connects"]; s.Mean != 100 || s.Seconds != 10 {
		t.Errorf("connects mean %g/s over %gs, want 100/s over 10s", s.Mean, s.Seconds)
	}
	pts := b.Points(got["listen.listen_overflows"].Headline)
	if len(pts) != 10 || pts[0].T != 1 || pts[9].V != 7 {
		t.Errorf("points %v", pts)
	}
	w := b.Warnings()
	if len(w) != 1 || w[0].Code != "accept_queue_overflow" || w[0].Intervals != 10 || w[0].FirstT != 1 {
		t.Errorf("warnings %+v", w)
	}
}

func TestDifferences(t *testing.T) {
	da, db := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	bundletest.Write(t, da, bundletest.Options{Somaxconn: "10", Overflows: 5})
	bundletest.Write(t, db, bundletest.Options{Somaxconn: "4096"})
	a, err := bundle.Load(da)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Load(db)
	if err != nil {
		t.Fatal(err)
	}
	var whats []string
	for _, d := range bundle.Differences(a, b) {
		whats = append(whats, d.What+"="+d.A+"/"+d.B)
	}
	// The two bundles differ in the setting and in the --out path of their
	// own command lines (not compared): only the setting counts.
	if len(whats) != 1 || whats[0] != "setting net.core.somaxconn=10/4096" {
		t.Fatalf("differences %v, want only somaxconn", whats)
	}
}

func TestBadBundles(t *testing.T) {
	root := t.TempDir()
	good := filepath.Join(root, "good")
	bundletest.Write(t, good, bundletest.Options{})

	if _, err := bundle.Load(filepath.Join(root, "nope")); err == nil || !strings.Contains(err.Error(), "no such directory") {
		t.Errorf("missing dir: %v", err)
	}
	if _, err := bundle.Load(root); err == nil || !strings.Contains(err.Error(), "not a nettrace record") {
		t.Errorf("not a bundle: %v", err)
	}
	if err := os.Remove(filepath.Join(good, "listen.ndjson")); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Load(good); err == nil || !strings.Contains(err.Error(), "listen.ndjson is missing") {
		t.Errorf("missing file: %v", err)
	}

	other := filepath.Join(root, "other")
	bundletest.Write(t, other, bundletest.Options{})
	meta := filepath.Join(other, bundle.MetaFile)
	data, _ := os.ReadFile(meta)
	var m map[string]any
	json.Unmarshal(data, &m)
	m["format"], m["nettrace_version"] = 99, "v9"
	data, _ = json.Marshal(m)
	os.WriteFile(meta, data, 0o644)
	if _, err := bundle.Load(other); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Errorf("other format: %v", err)
	}

	bad := filepath.Join(root, "bad")
	bundletest.Write(t, bad, bundletest.Options{})
	f, _ := os.OpenFile(filepath.Join(bad, "sched.ndjson"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("{not json\n")
	f.Close()
	if _, err := bundle.Load(bad); err == nil || !strings.Contains(err.Error(), "sched.ndjson line 11") {
		t.Errorf("malformed line: %v", err)
	}

	if _, err := bundle.Create(good, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("non-empty dir: %v", err)
	}
	keep := filepath.Join(good, "notes.txt")
	os.WriteFile(keep, []byte("mine"), 0o644)
	if _, err := bundle.Create(good, true); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(good)
	if len(left) != 1 || left[0].Name() != "notes.txt" {
		t.Errorf("after --force: %v, want only notes.txt", left)
	}
}

func TestCommandFigures(t *testing.T) {
	out := `Running 15s test @ http://127.0.0.1:8080/
  2 threads and 400 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    97.42ms  120.33ms   1.83s    91.77%
    Req/Sec   393.45    312.45     1.45k    68.05%
  10720 requests in 15.06s, 628.12KB read
  Socket errors: connect 0, read 13, write 0, timeout 9
Requests/sec:    711.95
Transfer/sec:     41.72KB
`
	got := map[string]float64{}
	for _, f := range bundle.ParseCommandFigures(out) {
		got[f.Key] = f.Value
	}
	want := map[string]float64{"requests_per_s": 711.95, "requests": 10720, "latency_avg_ms": 97.42, "socket_errors": 22, "non_2xx": 0}
	if len(got) != len(want) {
		t.Errorf("figures %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if f := bundle.ParseCommandFigures("hello\n"); len(f) != 0 {
		t.Errorf("figures from plain output: %v", f)
	}
}
