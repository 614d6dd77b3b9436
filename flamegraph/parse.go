package flamegraph

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/pprof/profile"
)

// AddFunc receives one stack, root first. The slice is reused between calls;
// the strings are not.
type AddFunc func(frames []string, count int64)

// LineError is a malformed line of a text profile.
type LineError struct {
	Line int // 1-based
	Text string
	Err  error
}

func (e *LineError) Error() string {
	text := e.Text
	if len(text) > 60 {
		text = text[:57] + "..."
	}
	return fmt.Sprintf("line %d: %v: %q", e.Line, e.Err, text)
}

func (e *LineError) Unwrap() error { return e.Err }

// interner shares frame strings between lines.
type interner map[string]string

func (in interner) get(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	in[s] = s
	return s
}

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), 64<<20)
	return sc
}

// ReadFolded reads folded stacks: "root;...;leaf count" per line, the count
// a non-negative integer after the last space. Blank lines are skipped. The
// first malformed line stops the read with a *LineError naming it.
func ReadFolded(r io.Reader, add AddFunc) error {
	sc := newScanner(r)
	in := interner{}
	var frames, names []string // names: the previous line's frames
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimRight(sc.Bytes(), "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		bad := func(format string, a ...any) error {
			return &LineError{Line: n, Text: string(line), Err: fmt.Errorf(format, a...)}
		}
		sp := bytes.LastIndexByte(line, ' ')
		if sp < 0 {
			return bad("parse folded stack: no count after the stack")
		}
		count, err := strconv.ParseInt(string(line[sp+1:]), 10, 64)
		if err != nil {
			return bad("parse count %q: want an integer", line[sp+1:])
		}
		if count < 0 {
			return bad("parse count %d: negative", count)
		}
		stack := line[:sp]
		if len(stack) == 0 {
			return bad("parse folded stack: empty stack")
		}
		// Consecutive lines usually share a prefix (folded files are
		// sorted): reuse the previous line's strings while the frames match.
		m := 0
		for m < len(names) {
			i := bytes.IndexByte(stack, ';')
			f := stack
			if i >= 0 {
				f = stack[:i]
			}
			if string(f) != names[m] {
				break
			}
			m++
			if i < 0 {
				stack = nil
				break
			}
			stack = stack[i+1:]
		}
		names = names[:m]
		for len(stack) > 0 {
			i := bytes.IndexByte(stack, ';')
			f := stack
			if i >= 0 {
				f, stack = stack[:i], stack[i+1:]
			} else {
				stack = nil
			}
			if len(f) == 0 {
				names = names[:0]
				return bad("parse folded stack: empty frame")
			}
			names = append(names, in.get(f))
		}
		frames = append(frames[:0], names...)
		add(frames, count)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read folded stacks: %w", err)
	}
	return nil
}

// ParseFolded reads folded stacks into a new tree.
func ParseFolded(r io.Reader) (*Tree, error) {
	t := NewTree()
	if err := ReadFolded(r, t.Add); err != nil {
		return nil, err
	}
	return t, nil
}

// ReadPerfScript reads `perf script` output: a header line per sample
// ("comm pid/tid [cpu] time: period event:") and its frames, one per
// indented line ("addr symbol+off (dso)"), leaf first, ending with a blank
// line. Each sample counts 1; the process name is the root frame and kernel
// frames get the _[k] suffix.
func ReadPerfScript(r io.Reader, add AddFunc) error {
	sc := newScanner(r)
	in := interner{}
	var (
		comm   string
		frames []string
		inSamp bool
	)
	flush := func() {
		if !inSamp {
			return
		}
		// frames are leaf first: reverse behind the process name.
		out := make([]string, 0, len(frames)+1)
		out = append(out, comm)
		for i := len(frames) - 1; i >= 0; i-- {
			out = append(out, frames[i])
		}
		add(out, 1)
		frames, inSamp = frames[:0], false
	}
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			flush()
			// The comm may contain spaces: it ends before the pid/tid field.
			f := strings.Fields(line)
			end := -1
			for i := 1; i < len(f); i++ {
				if isPID(f[i]) {
					end = i
					break
				}
			}
			if end < 0 {
				return &LineError{Line: n, Text: line, Err: fmt.Errorf("parse perf script header: no pid field")}
			}
			comm, inSamp = strings.Join(f[:end], " "), true
			continue
		}
		if !inSamp {
			return &LineError{Line: n, Text: line, Err: fmt.Errorf("parse perf script frame: no sample header before it")}
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return &LineError{Line: n, Text: line, Err: fmt.Errorf("parse perf script frame: want address, symbol and (dso)")}
		}
		sym := strings.Join(f[1:len(f)-1], " ")
		dso := strings.Trim(f[len(f)-1], "()")
		if len(f) == 2 {
			sym, dso = f[1], ""
			if strings.HasPrefix(f[1], "(") {
				sym, dso = "", strings.Trim(f[1], "()")
			}
		}
		if i := strings.LastIndex(sym, "+0x"); i > 0 {
			sym = sym[:i]
		}
		if sym == "" || sym == "[unknown]" {
			sym = "[" + filepath.Base(dso) + "]"
			if dso == "" || dso == "unknown" {
				sym = "[unknown]"
			}
		}
		if dso == "[kernel.kallsyms]" || strings.HasSuffix(dso, ".ko") || strings.HasPrefix(dso, "[kernel") {
			sym += "_[k]"
		}
		frames = append(frames, in.get([]byte(sym)))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read perf script output: %w", err)
	}
	flush()
	return nil
}

func isPID(s string) bool {
	pid, tid, _ := strings.Cut(s, "/")
	if _, err := strconv.Atoi(pid); err != nil {
		return false
	}
	if tid != "" {
		if _, err := strconv.Atoi(tid); err != nil {
			return false
		}
	}
	return true
}

// ReadPprof adds a pprof profile's samples, taking values of the sample type
// named sampleType ("" for the profile's default, else its first). Inlined
// functions become frames of their own; kernel frames ([kernel.kallsyms]
// mapping) get the _[k] suffix; the comm label, when present, is the root.
func ReadPprof(p *profile.Profile, sampleType string, add AddFunc) error {
	idx := 0
	if sampleType == "" {
		sampleType = p.DefaultSampleType
		if sampleType == "" && len(p.SampleType) > 0 {
			sampleType = p.SampleType[0].Type
		}
	}
	if sampleType != "" {
		found := false
		for i, st := range p.SampleType {
			if st.Type == sampleType {
				idx, found = i, true
				break
			}
		}
		if !found {
			return fmt.Errorf("find sample type %q in the pprof profile", sampleType)
		}
	}
	var frames []string
	for _, s := range p.Sample {
		if idx >= len(s.Value) {
			continue
		}
		frames = frames[:0]
		if c := s.Label["comm"]; len(c) > 0 {
			frames = append(frames, c[0])
		}
		for i := len(s.Location) - 1; i >= 0; i-- {
			loc := s.Location[i]
			kernel := loc.Mapping != nil && strings.HasPrefix(loc.Mapping.File, "[kernel")
			if len(loc.Line) == 0 {
				name := fmt.Sprintf("0x%x", loc.Address)
				if loc.Mapping != nil {
					name = filepath.Base(loc.Mapping.File) + "+" + fmt.Sprintf("0x%x", loc.Address-loc.Mapping.Start+loc.Mapping.Offset)
				}
				frames = append(frames, name)
				continue
			}
			// Lines are innermost first.
			for j := len(loc.Line) - 1; j >= 0; j-- {
				name := "[unknown]"
				if fn := loc.Line[j].Function; fn != nil {
					name = fn.Name
				}
				if kernel {
					name += "_[k]"
				}
				frames = append(frames, name)
			}
		}
		add(frames, s.Value[idx])
	}
	return nil
}

// Format is a profile's input format.
type Format string

// The input formats Read detects.
const (
	Folded     Format = "folded"
	PerfScript Format = "perf-script"
	Pprof      Format = "pprof"
)

// Read detects the format of r (pprof: gzip or protobuf; perf script: an
// indented frame line; else folded stacks) and adds its stacks.
func Read(r io.Reader, add AddFunc) (Format, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, _ := br.Peek(4096)
	if len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b {
		if isGzippedText(head) {
			zr, err := gzip.NewReader(br)
			if err != nil {
				return "", fmt.Errorf("read gzip: %w", err)
			}
			return Read(zr, add)
		}
		return Pprof, readPprof(br, add)
	}
	if len(head) > 0 && !isText(head) {
		return Pprof, readPprof(br, add)
	}
	if looksLikePerfScript(head) {
		return PerfScript, ReadPerfScript(br, add)
	}
	return Folded, ReadFolded(br, add)
}

func readPprof(r io.Reader, add AddFunc) error {
	p, err := profile.Parse(r)
	if err != nil {
		return fmt.Errorf("parse pprof profile: %w", err)
	}
	return ReadPprof(p, "", add)
}

// isGzippedText peeks into a gzip stream to tell compressed text (folded
// stacks) from a compressed pprof protobuf.
func isGzippedText(head []byte) bool {
	zr, err := gzip.NewReader(bytes.NewReader(head))
	if err != nil {
		return false
	}
	buf := make([]byte, 512)
	n, _ := io.ReadFull(zr, buf)
	return n > 0 && isText(buf[:n])
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

func looksLikePerfScript(head []byte) bool {
	for _, line := range bytes.Split(head, []byte("\n")) {
		if len(line) > 0 && (line[0] == '\t' || line[0] == ' ') && len(bytes.TrimSpace(line)) > 0 {
			return true
		}
	}
	return false
}

// ReadPprofFile parses a pprof file (gzipped or not) and adds the values of
// sampleType ("" for the default).
func ReadPprofFile(r io.Reader, sampleType string, add AddFunc) error {
	p, err := profile.Parse(r)
	if err != nil {
		return fmt.Errorf("parse pprof profile: %w", err)
	}
	return ReadPprof(p, sampleType, add)
}
