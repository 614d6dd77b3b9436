// Package doctor gathers what `nettrace doctor` shows: kernel capabilities,
// the attach tier each tracer gets here, and the network settings and
// counters that explain lost connections.
package doctor

import (
	"fmt"
	"io"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
)

// Options select the namespace to audit and the tier to plan with.
type Options struct {
	NetnsPath string      // audit this network namespace ("" = ours)
	PID       int         // report this process's RLIMIT_NOFILE
	Tier      attach.Tier // plan tracers with this tier forced
}

// TracerRow is one hook of one tracer as it would attach here.
type TracerRow struct {
	Tracer  string           `json:"tracer"`
	Hook    string           `json:"hook,omitempty"`
	Method  string           `json:"method,omitempty"`
	Tier    attach.Tier      `json:"tier,omitempty"`
	GivesUp string           `json:"gives_up,omitempty"`
	Refused []attach.Refusal `json:"refused,omitempty"`
	Error   string           `json:"error,omitempty"` // the tracer cannot run here
}

// Report is everything doctor found.
type Report struct {
	Kernel   string           `json:"kernel"`
	Arch     string           `json:"arch"`
	CPUs     int              `json:"cpus"`
	Probes   []kernel.Probe   `json:"probes"`
	Tracers  []TracerRow      `json:"tracers"`
	Settings *settings.Report `json:"settings"`
}

// Run probes the kernel, plans every registered tracer and audits settings.
func Run(opts Options) (*Report, error) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	r := &Report{
		Kernel: unix.ByteSliceToString(uts.Release[:]),
		Arch:   runtime.GOARCH,
		CPUs:   runtime.NumCPU(),
		Probes: kernel.Probes(),
	}
	for _, t := range attach.Registered() {
		choices, err := attach.Plan(t, opts.Tier)
		if err != nil {
			r.Tracers = append(r.Tracers, TracerRow{Tracer: t.Name, Error: err.Error()})
			continue
		}
		for _, c := range choices {
			r.Tracers = append(r.Tracers, TracerRow{Tracer: t.Name, Hook: c.Hook, Method: c.Method,
				Tier: c.Tier, GivesUp: c.GivesUp, Refused: c.Refused})
		}
	}
	s, err := settings.Audit(settings.Options{NetnsPath: opts.NetnsPath, PID: opts.PID})
	if err != nil {
		return nil, fmt.Errorf("audit settings: %w", err)
	}
	r.Settings = s
	return r, nil
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// WriteText renders the report as tables for people.
func (r *Report) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "nettrace doctor: kernel %s (%s), %d CPUs\n\nKernel capabilities\n", r.Kernel, r.Arch, r.CPUs)
	var rows [][]string
	for _, p := range r.Probes {
		rows = append(rows, []string{p.Name, yesNo(p.OK), p.What, p.Detail})
	}
	if err := output.WriteTable(w, []string{"CHECK", "OK", "WHAT", "DETAIL"}, rows); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nTracers: attach method chosen here (fentry > kprobe > tracepoint)\n")
	rows = nil
	for _, t := range r.Tracers {
		if t.Error != "" {
			rows = append(rows, []string{t.Tracer, "-", "unavailable", "-", t.Error, ""})
			continue
		}
		var refused []string
		for _, rf := range t.Refused {
			refused = append(refused, rf.Method+": "+rf.Reason)
		}
		givesUp := t.GivesUp
		if givesUp == "" {
			givesUp = "nothing"
		}
		rows = append(rows, []string{t.Tracer, t.Hook, t.Method, string(t.Tier), givesUp, strings.Join(refused, "; ")})
	}
	if err := output.WriteTable(w, []string{"TRACER", "HOOK", "METHOD", "TIER", "GIVES UP", "NOT USED BECAUSE"}, rows); err != nil {
		return err
	}

	s := r.Settings
	fmt.Fprintf(w, "\nSettings of network namespace %s\n", s.Netns)
	rows = nil
	var fixes []string
	for _, st := range s.Settings {
		rows = append(rows, []string{st.Name, st.Value, string(st.Status), st.Reason})
		if st.Fix != "" && (st.Status == settings.Warn || st.Status == settings.Bad) {
			fixes = append(fixes, fmt.Sprintf("  %s: %s", st.Name, st.Fix))
		}
	}
	if err := output.WriteTable(w, []string{"SETTING", "VALUE", "STATUS", "REASON"}, rows); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nCounters since boot (trouble now)\n")
	rows = nil
	for _, c := range s.Counters {
		rows = append(rows, []string{c.Name, fmt.Sprint(c.Value), string(c.Status), c.Reason})
		if c.Fix != "" && (c.Status == settings.Warn || c.Status == settings.Bad) {
			fixes = append(fixes, fmt.Sprintf("  %s: %s", c.Name, c.Fix))
		}
	}
	if err := output.WriteTable(w, []string{"COUNTER", "VALUE", "STATUS", "REASON"}, rows); err != nil {
		return err
	}
	if len(fixes) > 0 {
		fmt.Fprintf(w, "\nFixes\n%s\n", strings.Join(fixes, "\n"))
	}
	return nil
}
