package bundle

import (
	"os"
	"regexp"
	"strconv"
	"strings"
)

// CommandFigure is a figure the load generator printed itself: what the
// client saw, next to what the tracers saw.
type CommandFigure struct {
	Key   string  `json:"key"`   // "requests_per_s"
	Label string  `json:"label"` // "requests/s (wrk)"
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// Patterns for the load generators whose summaries record understands: wrk
// and ApacheBench (ab).
var commandPatterns = []struct {
	key, label, unit string
	re               *regexp.Regexp
	scale            func(num, unit string) float64
}{
	{"requests_per_s", "requests/s (wrk)", "/s", regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`), nil},
	{"requests", "requests (wrk)", "", regexp.MustCompile(`(?m)^\s+([0-9]+) requests in `), nil},
	{"latency_avg_ms", "latency avg (wrk)", "ms", regexp.MustCompile(`(?m)^\s+Latency\s+([0-9.]+)(us|ms|s)\b`), durationMS},
	{"socket_errors", "socket errors (wrk)", "", regexp.MustCompile(`(?m)^\s+Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)`), nil},
	{"non_2xx", "non-2xx responses (wrk)", "", regexp.MustCompile(`(?m)^\s+Non-2xx or 3xx responses: ([0-9]+)`), nil},
	{"requests_per_s", "requests/s (ab)", "/s", regexp.MustCompile(`(?m)^Requests per second:\s+([0-9.]+)`), nil},
	{"failed_requests", "failed requests (ab)", "", regexp.MustCompile(`(?m)^Failed requests:\s+([0-9]+)`), nil},
}

func durationMS(num, unit string) float64 {
	v, _ := strconv.ParseFloat(num, 64)
	switch unit {
	case "us":
		return v / 1000
	case "s":
		return v * 1000
	}
	return v
}

// CommandFigures returns the figures the command printed on its standard
// output, for the load generators it knows (wrk, ab); none otherwise. A
// wrk run without socket errors prints no such line: they count as 0.
func (b *Bundle) CommandFigures() []CommandFigure {
	if !b.HasFile(StdoutFile) {
		return nil
	}
	data, err := os.ReadFile(b.Path(StdoutFile))
	if err != nil {
		return nil
	}
	return parseCommandFigures(string(data))
}

func parseCommandFigures(out string) []CommandFigure {
	var figs []CommandFigure
	wrk := strings.Contains(out, "Requests/sec:")
	for _, p := range commandPatterns {
		m := p.re.FindStringSubmatch(out)
		if m == nil {
			if wrk && (p.key == "socket_errors" || p.key == "non_2xx") {
				figs = append(figs, CommandFigure{p.key, p.label, 0, p.unit})
			}
			continue
		}
		var v float64
		switch {
		case p.scale != nil:
			v = p.scale(m[1], m[2])
		default:
			for _, s := range m[1:] { // socket errors: the sum of the kinds
				x, _ := strconv.ParseFloat(s, 64)
				v += x
			}
		}
		figs = append(figs, CommandFigure{p.key, p.label, v, p.unit})
	}
	return figs
}
