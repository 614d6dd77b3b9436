// Package bundle is the on-disk record of one load test, written by
// `nettrace record` and read by `nettrace compare` and `nettrace report`.
//
// A bundle is a directory:
//
//	meta.json             Meta: times, host, kernel, CPUs, version, tiers, command, status
//	settings-before.json  the doctor audit (settings.Report) before the tracers start
//	settings-after.json   the same after they stop
//	<tracer>.ndjson       each interval of each tracer, as `nettrace <tracer> -o json` prints it
//	profile.pb.gz         with --profile: pprof profile,
//	profile.folded        folded stacks,
//	profile.svg           and the flame graph
//	command.stdout        with a command: its standard output
//	command.stderr        and its standard error
//	summary.txt           headline figures and the warnings that fired
//
// meta.json is written first with Status "running" and rewritten at the end,
// so a record killed half-way leaves a bundle that reads as incomplete.
package bundle

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
)

// Format is the bundle layout version this nettrace writes and reads.
const Format = 1

// Status values of Meta.Status.
const (
	Running     = "running"     // the record is under way, or was killed
	Complete    = "complete"    // ended at its duration, when its command exited, or by Ctrl-C with neither
	Interrupted = "interrupted" // Ctrl-C or SIGTERM before the duration or the command's end
	Failed      = "failed"      // a tracer or the command could not run
)

// Names of the files in a bundle.
const (
	MetaFile           = "meta.json"
	SettingsBeforeFile = "settings-before.json"
	SettingsAfterFile  = "settings-after.json"
	ProfilePprofFile   = "profile.pb.gz"
	ProfileFoldedFile  = "profile.folded"
	ProfileSVGFile     = "profile.svg"
	StdoutFile         = "command.stdout"
	StderrFile         = "command.stderr"
	SummaryFile        = "summary.txt"
)

// SeriesFile is the NDJSON file of a tracer.
func SeriesFile(tracer string) string { return tracer + ".ndjson" }

// Meta describes a record: meta.json.
type Meta struct {
	Format          int                          `json:"format"`
	NettraceVersion string                       `json:"nettrace_version"`
	Status          string                       `json:"status"`
	Complete        bool                         `json:"complete"`
	StopReason      string                       `json:"stop_reason,omitempty"` // "duration", "command exited", "interrupted", ...
	Start           time.Time                    `json:"start"`
	End             time.Time                    `json:"end"`
	DurationS       float64                      `json:"duration_s"`
	IntervalS       float64                      `json:"interval_s"`
	Host            string                       `json:"host"`
	Kernel          string                       `json:"kernel"` // uname -r
	KernelVersion   string                       `json:"kernel_version"`
	Arch            string                       `json:"arch"`
	CPUs            int                          `json:"cpus"`
	Netns           string                       `json:"netns"` // "net:[4026531840]"
	NetnsPath       string                       `json:"netns_path,omitempty"`
	Tracers         []string                     `json:"tracers"`
	Tiers           map[string]map[string]string `json:"tiers"` // tracer -> hook -> tier
	Profile         bool                         `json:"profile"`
	Args            []string                     `json:"args"`              // nettrace's own command line
	Command         []string                     `json:"command,omitempty"` // the command run under the record
	CommandPID      int                          `json:"command_pid,omitempty"`
	ExitCode        *int                         `json:"exit_code,omitempty"` // nil: no command, or it never started
	CommandError    string                       `json:"command_error,omitempty"`
	Errors          []string                     `json:"errors,omitempty"` // what went wrong during the record
	Files           []string                     `json:"files"`            // every file the bundle holds
}

// Interval is one interval of a tracer, as read back from its NDJSON file.
type Interval struct {
	Time      time.Time          `json:"time"`
	IntervalS float64            `json:"interval_s"`
	Tiers     map[string]string  `json:"tiers"`
	Header    map[string]any     `json:"header"`
	Warnings  []output.Warning   `json:"warnings"`
	Rows      []json.RawMessage  `json:"-"`
	numbers   map[string]float64 // numeric header values
}

// Number returns a numeric header value of the interval.
func (iv *Interval) Number(key string) (float64, bool) {
	v, ok := iv.numbers[key]
	return v, ok
}

// Bundle is a record read back from its directory.
type Bundle struct {
	Dir            string
	Meta           Meta
	SettingsBefore *settings.Report
	SettingsAfter  *settings.Report
	Series         map[string][]Interval // tracer -> intervals in time order
}

// HasFile reports whether the bundle holds the named file.
func (b *Bundle) HasFile(name string) bool {
	for _, f := range b.Meta.Files {
		if f == name {
			return true
		}
	}
	return false
}

// Path returns the path of a file in the bundle.
func (b *Bundle) Path(name string) string { return filepath.Join(b.Dir, name) }

// Name is a short name for the bundle: its directory's base name.
func (b *Bundle) Name() string { return filepath.Base(filepath.Clean(b.Dir)) }

// Load reads the bundle in dir. It fails on a directory that is not a
// bundle, a bundle of another format, a file meta.json lists that is
// missing, or a malformed file (naming it, with the line number for NDJSON).
// An incomplete bundle loads; check Meta.Complete.
func Load(dir string) (*Bundle, error) {
	b := &Bundle{Dir: dir, Series: map[string][]Interval{}}
	data, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if errors.Is(err, os.ErrNotExist) {
		if st, serr := os.Stat(dir); serr != nil || !st.IsDir() {
			return nil, fmt.Errorf("read bundle %s: no such directory", dir)
		}
		return nil, fmt.Errorf("read bundle %s: no %s (not a nettrace record)", dir, MetaFile)
	}
	if err != nil {
		return nil, fmt.Errorf("read bundle %s: %w", dir, err)
	}
	var probe struct {
		Format  *int   `json:"format"`
		Version string `json:"nettrace_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil || probe.Format == nil {
		return nil, fmt.Errorf("read bundle %s: %s is not a nettrace record's meta.json", dir, MetaFile)
	}
	if *probe.Format != Format {
		return nil, fmt.Errorf("read bundle %s: written by nettrace %s in bundle format %d; this nettrace reads format %d", dir, probe.Version, *probe.Format, Format)
	}
	if err := json.Unmarshal(data, &b.Meta); err != nil {
		return nil, fmt.Errorf("read bundle %s: parse %s: %w", dir, MetaFile, err)
	}
	for _, f := range b.Meta.Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("read bundle %s: %s is missing (meta.json lists it)", dir, f)
		}
	}
	for _, s := range []struct {
		name string
		dst  **settings.Report
	}{{SettingsBeforeFile, &b.SettingsBefore}, {SettingsAfterFile, &b.SettingsAfter}} {
		if !b.HasFile(s.name) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, s.name))
		if err != nil {
			return nil, fmt.Errorf("read bundle %s: %w", dir, err)
		}
		var r settings.Report
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("read bundle %s: parse %s: %w", dir, s.name, err)
		}
		*s.dst = &r
	}
	for _, tr := range b.Meta.Tracers {
		name := SeriesFile(tr)
		if !b.HasFile(name) {
			continue
		}
		ivs, err := readSeries(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read bundle %s: %w", dir, err)
		}
		b.Series[tr] = ivs
	}
	return b, nil
}

// readSeries parses a tracer's NDJSON file: interval objects, each followed
// by its row objects.
func readSeries(path string) ([]Interval, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	name := filepath.Base(path)
	var out []Interval
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for line := 1; sc.Scan(); line++ {
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		var typ struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(raw, &typ); err != nil {
			return nil, fmt.Errorf("parse %s line %d: %w", name, line, err)
		}
		switch typ.Type {
		case "interval":
			var iv Interval
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			if err := dec.Decode(&iv); err != nil {
				return nil, fmt.Errorf("parse %s line %d: %w", name, line, err)
			}
			iv.numbers = map[string]float64{}
			for k, v := range iv.Header {
				if n, ok := v.(json.Number); ok {
					if x, err := n.Float64(); err == nil {
						iv.numbers[k] = x
					}
				}
			}
			out = append(out, iv)
		case "row":
			if len(out) == 0 {
				return nil, fmt.Errorf("parse %s line %d: a row before any interval", name, line)
			}
			out[len(out)-1].Rows = append(out[len(out)-1].Rows, json.RawMessage(append([]byte(nil), raw...)))
		default:
			return nil, fmt.Errorf("parse %s line %d: unknown object type %q", name, line, typ.Type)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}

// Writer creates a bundle's files and keeps the list meta.json gives.
type Writer struct {
	Dir   string
	files map[string]bool
}

// Create prepares dir for a new bundle. A directory that exists and is not
// empty is refused unless force is set; then the files of a previous bundle
// in it are removed (other files are left alone).
func Create(dir string, force bool) (*Writer, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create bundle directory: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("open bundle directory: %w", err)
	case len(entries) > 0 && !force:
		return nil, fmt.Errorf("bundle directory %s exists and is not empty (use --force to overwrite a previous record)", dir)
	case len(entries) > 0:
		for _, e := range entries {
			if isBundleFile(e.Name()) {
				if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
					return nil, fmt.Errorf("remove previous record's file: %w", err)
				}
			}
		}
	}
	return &Writer{Dir: dir, files: map[string]bool{}}, nil
}

func isBundleFile(name string) bool {
	switch name {
	case MetaFile, SettingsBeforeFile, SettingsAfterFile, ProfilePprofFile, ProfileFoldedFile,
		ProfileSVGFile, StdoutFile, StderrFile, SummaryFile, "report.html":
		return true
	}
	return strings.HasSuffix(name, ".ndjson")
}

// Path returns the path of name in the bundle.
func (w *Writer) Path(name string) string { return filepath.Join(w.Dir, name) }

// Create creates (truncates) a file of the bundle and lists it.
func (w *Writer) Create(name string) (*os.File, error) {
	f, err := os.Create(w.Path(name))
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	w.files[name] = true
	return f, nil
}

// WriteFile writes a whole file of the bundle and lists it.
func (w *Writer) WriteFile(name string, data []byte) error {
	if err := writeAtomic(w.Path(name), data); err != nil {
		return err
	}
	w.files[name] = true
	return nil
}

// WriteJSON writes v, indented, as a file of the bundle.
func (w *Writer) WriteJSON(name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	return w.WriteFile(name, append(data, '\n'))
}

// WriteMeta writes meta.json (atomically: a reader never sees half of it),
// with m.Files set to the files written so far.
func (w *Writer) WriteMeta(m *Meta) error {
	m.Format = Format
	w.files[MetaFile] = true
	m.Files = m.Files[:0]
	for f := range w.files {
		m.Files = append(m.Files, f)
	}
	sort.Strings(m.Files)
	return w.WriteJSON(MetaFile, m)
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// ReadSummary returns summary.txt, or "" when the bundle has none.
func (b *Bundle) ReadSummary() (string, error) {
	if !b.HasFile(SummaryFile) {
		return "", nil
	}
	data, err := os.ReadFile(b.Path(SummaryFile))
	return string(data), err
}

// Open opens a file of the bundle.
func (b *Bundle) Open(name string) (io.ReadCloser, error) {
	if !b.HasFile(name) {
		return nil, fmt.Errorf("bundle %s has no %s", b.Dir, name)
	}
	return os.Open(b.Path(name))
}
