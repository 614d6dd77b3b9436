// Package bundletest writes synthetic record bundles for tests of the code
// that reads them (compare, report).
package bundletest

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
)

// Options shape a synthetic bundle.
type Options struct {
	Somaxconn string  // value of net.core.somaxconn in the settings ("4096" when empty)
	Overflows float64 // listen overflows per interval
	Connects  float64 // connects per interval
	Intervals int     // 10 when zero
	Profile   string  // folded stacks for profile.folded ("" = no profile)
	Complete  bool

	// SomaxconnAfter is net.core.somaxconn in settings-after.json (Somaxconn
	// when empty): a setting changed during the run.
	SomaxconnAfter string
	// ProfileSVG also writes profile.svg, drawn from Profile.
	ProfileSVG bool
}

// Write writes a bundle with ports, listen and sched series to dir.
func Write(t testing.TB, dir string, o Options) {
	t.Helper()
	if err := write(dir, o); err != nil {
		t.Fatal(err)
	}
}

func write(dir string, o Options) error {
	if o.Somaxconn == "" {
		o.Somaxconn = "4096"
	}
	if o.Intervals == 0 {
		o.Intervals = 10
	}
	w, err := bundle.Create(dir, false)
	if err != nil {
		return err
	}
	start := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	m := &bundle.Meta{
		NettraceVersion: "test", Status: bundle.Running, Start: start,
		IntervalS: 1, Host: "testhost", Kernel: "6.18.0", KernelVersion: "#1 SMP", Arch: "amd64", CPUs: 2,
		Netns: "net:[4026531840]", Tracers: []string{"ports", "listen", "sched"},
		Tiers: map[string]map[string]string{
			"ports": {"connect": "tracepoint"}, "listen": {"drop": "tracepoint"}, "sched": {"switch": "tracepoint"},
		},
		Args: []string{"nettrace", "record", "--out", dir, "--", "loadgen"}, Command: []string{"loadgen"},
	}
	rep := &settings.Report{Netns: m.Netns, Settings: []settings.Setting{
		{Name: "net.core.somaxconn", Value: o.Somaxconn, Status: settings.OK},
		{Name: "net.ipv4.tcp_tw_reuse", Value: "2", Status: settings.OK},
	}}
	if err := w.WriteJSON(bundle.SettingsBeforeFile, rep); err != nil {
		return err
	}
	after := *rep
	if o.SomaxconnAfter != "" {
		after.Settings = append([]settings.Setting(nil), rep.Settings...)
		after.Settings[0].Value = o.SomaxconnAfter
	}
	if err := w.WriteJSON(bundle.SettingsAfterFile, &after); err != nil {
		return err
	}
	type row struct {
		Listener      string  `json:"listener"`
		OverflowsPerS float64 `json:"overflows_per_s"`
	}
	series := map[string]*bytes.Buffer{"ports": {}, "listen": {}, "sched": {}}
	jopts := output.Options{Format: output.JSON}
	for i := 1; i <= o.Intervals; i++ {
		now := start.Add(time.Duration(i) * time.Second)
		var warns []output.Warning
		if o.Overflows > 0 {
			warns = append(warns, output.Warning{Code: "accept_queue_overflow", Message: fmt.Sprintf("127.0.0.1:8080 overflowed %g times", o.Overflows), Fix: "accept faster"})
		}
		frames := []output.Frame{
			{Tracer: "ports", Header: []output.Field{{Key: "connects", Value: o.Connects}, {Key: "failures", Value: 0}, {Key: "ports_in_use", Value: 10 + i}, {Key: "time_wait", Value: 3 * i}}},
			{Tracer: "listen", Header: []output.Field{{Key: "somaxconn", Value: o.Somaxconn}, {Key: "listen_overflows", Value: o.Overflows}, {Key: "listen_drops", Value: o.Overflows}, {Key: "syncookies_sent", Value: 0}},
				Warnings: warns, Rows: []row{{"127.0.0.1:8080", o.Overflows}}},
			{Tracer: "sched", Header: []output.Field{{Key: "switches", Value: 1000 * i}, {Key: "involuntary_per_s", Value: 50.0}, {Key: "runq_p99_us", Value: 100 * i}, {Key: "runnable_avg", Value: 1.5}}},
		}
		for _, f := range frames {
			f.Time, f.Interval = now, time.Second
			if err := output.Render(series[f.Tracer], f, jopts); err != nil {
				return err
			}
		}
	}
	for tr, buf := range series {
		if err := w.WriteFile(bundle.SeriesFile(tr), buf.Bytes()); err != nil {
			return err
		}
	}
	if o.Profile != "" {
		m.Profile = true
		if err := w.WriteFile(bundle.ProfileFoldedFile, []byte(o.Profile)); err != nil {
			return err
		}
		if o.ProfileSVG {
			tree, err := flamegraph.ParseFolded(strings.NewReader(o.Profile))
			if err != nil {
				return err
			}
			var svg bytes.Buffer
			if err := tree.WriteSVG(&svg, flamegraph.Options{}); err != nil {
				return err
			}
			if err := w.WriteFile(bundle.ProfileSVGFile, svg.Bytes()); err != nil {
				return err
			}
		}
	}
	if err := w.WriteFile(bundle.StdoutFile, []byte("loadgen: done\n")); err != nil {
		return err
	}
	if err := w.WriteFile(bundle.StderrFile, nil); err != nil {
		return err
	}
	if err := w.WriteFile(bundle.SummaryFile, []byte("synthetic\n")); err != nil {
		return err
	}
	m.End = start.Add(time.Duration(o.Intervals) * time.Second)
	m.DurationS = float64(o.Intervals)
	exit := 0
	m.ExitCode = &exit
	if o.Complete {
		m.Status, m.Complete, m.StopReason = bundle.Complete, true, "command exited"
	}
	if err := w.WriteMeta(m); err != nil {
		return err
	}
	_, err = os.Stat(dir)
	return err
}
