// Package output renders the per-interval snapshots of every nettrace tracer,
// either as a compact top-style table or as NDJSON.
//
// A tracer hands Run a snapshot function that returns a Frame each interval.
// A Frame carries a header (time, tracer, interval, attach tiers, key
// figures and warnings) and Rows, a slice of structs. The row struct's tags
// drive everything else:
//
//	type Row struct {
//		Dest       string  `json:"dest" col:"DEST"`
//		Connects   uint64  `json:"connects"`                // JSON only
//		ConnectsPS float64 `json:"connects_per_s" col:"CONN/s,%.1f"`
//		LatP99US   float64 `json:"latency_p99_us" col:"P99(us),%.0f"`
//	}
//
// The col tag is "HEADER[,printf-format]"; a field without a col tag, or with
// col:"-", appears in JSON only. Field order is column order. Without a
// format, floats print as %.1f and everything else as %v. Numeric columns are
// right-aligned.
//
// Sorting (--sort) is by JSON key: numbers (and bools) descending, strings
// ascending; ties keep the tracer's order. --top applies after sorting, to
// the table and to JSON alike.
//
// # Conventions for tracers
//
//   - Units are part of JSON names: latency_p99_us, bytes_per_s, wait_ms.
//   - Rows carry interval counts (connects) next to rates (connects_per_s),
//     so scripts can add intervals up exactly instead of re-multiplying
//     rounded rates by an interval length.
//   - Frame.Interval is the measured length of the interval, not the
//     requested one; rates are computed from it.
//   - The JSON keys type, tracer, time and interval_s are reserved for the
//     envelope of each NDJSON row and cannot be used by row fields.
//   - Warning.Code is a stable identifier scripts may match on; Message names
//     the concrete object and value, Fix is a command that cures it.
//
// # NDJSON
//
// Each interval writes one object of type "interval":
//
//	{"type":"interval","tracer":"ports","time":"...","interval_s":1,"tiers":{...},"header":{...},"warnings":[...]}
//
// followed by one object of type "row" per row, with the row's fields
// flattened into the object:
//
//	{"type":"row","tracer":"ports","time":"...","interval_s":1,"dest":"10.0.0.1:80","connects":12,...}
package output
