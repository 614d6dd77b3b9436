package output

import "time"

// Warning is a concrete problem a tracer found, with the command that fixes it.
type Warning struct {
	Code    string `json:"code"`    // stable id, e.g. "somaxconn_caps_backlog"
	Message string `json:"message"` // e.g. "backlog of :80 capped at 10 by net.core.somaxconn"
	Fix     string `json:"fix"`     // e.g. "sysctl -w net.core.somaxconn=4096"
}

// Field is one key figure of a frame's header.
type Field struct {
	Key    string // JSON key, with its unit: "connects_per_s"
	Label  string // table label: "connects/s"; Key when empty
	Value  any    // number, string, ...
	Format string // printf format for the table; %.1f for floats, %v otherwise, when empty
}

// Frame is one interval's snapshot of a tracer.
type Frame struct {
	Tracer   string            // "ports"
	Time     time.Time         // end of the interval
	Interval time.Duration     // measured length of the interval
	Tiers    map[string]string // hook -> attach tier used, e.g. "connect": "tracepoint"
	Header   []Field           // key figures
	Warnings []Warning         // problems found in this interval
	Rows     any               // slice of structs (or of pointers to structs); see the package doc
	Sort     string            // default sort key (a JSON key of the row struct); Options.Sort overrides it
}
