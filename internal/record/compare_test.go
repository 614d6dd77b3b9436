package record

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/bundle/bundletest"
	"github.com/nettrace/nettrace/internal/output"
)

func load(t *testing.T, dir string) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCompare(t *testing.T) {
	root := t.TempDir()
	da, db := filepath.Join(root, "before"), filepath.Join(root, "after")
	bundletest.Write(t, da, bundletest.Options{Somaxconn: "10", Overflows: 12, Connects: 50, Complete: true,
		Profile: "app;main;handle;parse 30\napp;main;handle;write 70\n"})
	bundletest.Write(t, db, bundletest.Options{Somaxconn: "4096", Connects: 80,
		Profile: "app;main;handle;parse 90\napp;main;handle;write 10\n"})
	a, b := load(t, da), load(t, db)
	c := Compare(a, b)
	rows := map[string]CompareRow{}
	for _, r := range c.Rows {
		rows[r.Tracer+"."+r.Key] = r
	}
	ov := rows["listen.listen_overflows"]
	if *ov.A != 120 || *ov.B != 0 || *ov.Delta != -120 || *ov.DeltaPct != -100 {
		t.Errorf("overflows row %+v", ov)
	}
	if cn := rows["ports.connects"]; *cn.A != 500 || *cn.B != 800 || *cn.RateB != 80 || *cn.DeltaPct != 60 {
		t.Errorf("connects row %+v", cn)
	}
	if len(c.Cleared) != 1 || c.Cleared[0].Code != "accept_queue_overflow" || len(c.Appeared) != 0 {
		t.Errorf("cleared %+v appeared %+v", c.Cleared, c.Appeared)
	}
	if len(c.Notices) != 1 || !strings.Contains(c.Notices[0], "after is incomplete") {
		t.Errorf("notices %v", c.Notices)
	}
	var out bytes.Buffer
	svg := filepath.Join(root, "diff.svg")
	ok, err := WriteDiffFlameGraph(svg, a, b)
	if err != nil || !ok {
		t.Fatalf("diff flame graph: %v %v", ok, err)
	}
	c.FlameGraph = svg
	if err := c.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, want := range []string{"conditions differ", "setting net.core.somaxconn: 10 -> 4096", "listen overflows", "120 (12/s)", "-120 (-100%)",
		"warnings that cleared in B", "differential flame graph"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("compare text lacks %q", want)
		}
	}
	data, _ := os.ReadFile(svg)
	// parse grew (red), write shrank (blue).
	if !bytes.Contains(data, []byte("parse")) || !bytes.Contains(data, []byte("<svg")) {
		t.Errorf("diff svg lacks frames")
	}
}

func TestProgressLine(t *testing.T) {
	last := map[string]output.Frame{
		"ports":  {Interval: 500 * time.Millisecond, Header: []output.Field{{Key: "connects", Value: uint64(40)}, {Key: "failures", Value: 0}}},
		"listen": {Interval: 500 * time.Millisecond, Header: []output.Field{{Key: "listen_overflows", Value: uint64(3)}}},
		"sched":  {Interval: 500 * time.Millisecond, Header: []output.Field{{Key: "runq_p99_us", Value: 12.5}}},
	}
	got := progressLine(12*time.Second+300*time.Millisecond, 30*time.Second, last, []string{"ports", "listen", "sched"})
	want := "recording 12s of 30s (18s left)  connects 80/s  failed 0/s  overflows 6/s  runq p99 12.5us"
	if got != want {
		t.Errorf("progress line\n got %q\nwant %q", got, want)
	}
}
