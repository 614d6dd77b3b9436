package output

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type testRow struct {
	Dest       string  `json:"dest" col:"DEST"`
	Connects   uint64  `json:"connects" col:"-"`
	Failures   int     `json:"failures"`
	ConnectsPS float64 `json:"connects_per_s" col:"CONN/s,%.1f"`
	LatP99US   float64 `json:"latency_p99_us" col:"P99(us),%.0f"`
	Hidden     string  `json:"-" col:"HIDDEN"`
}

func testFrame() Frame {
	return Frame{
		Tracer:   "ports",
		Time:     time.Date(2025, 3, 4, 13, 5, 9, 123456789, time.UTC),
		Interval: 1500 * time.Millisecond,
		Tiers:    map[string]string{"connect": "tracepoint", "accept": "raw_tp"},
		Header: []Field{
			{Key: "connects_per_s", Label: "connects/s", Value: 120.0},
			{Key: "failures_per_s", Label: "failures/s", Value: 0.25},
			{Key: "sockets", Value: 7},
		},
		Warnings: []Warning{{
			Code:    "somaxconn_caps_backlog",
			Message: "backlog of :80 capped at 10 by net.core.somaxconn",
			Fix:     "sysctl -w net.core.somaxconn=4096",
		}},
		Rows: []testRow{
			{Dest: "10.0.0.1:80", Connects: 3, Failures: 1, ConnectsPS: 2, LatP99US: 812.6, Hidden: "x"},
			{Dest: "10.0.0.2:443", Connects: 180, ConnectsPS: 120, LatP99US: 95.4},
			{Dest: "127.0.0.1:8080", Connects: 45, Failures: 2, ConnectsPS: 30, LatP99US: 1234.5},
		},
	}
}

func TestRenderTable(t *testing.T) {
	var buf bytes.Buffer
	if err := Render(&buf, testFrame(), Options{Format: Table, Sort: "connects_per_s", Top: 2}); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"13:05:09  ports  interval 1.50s  tier accept=raw_tp connect=tracepoint\n" +
		"connects/s 120.0  failures/s 0.2  sockets 7\n" +
		"! backlog of :80 capped at 10 by net.core.somaxconn (fix: sysctl -w net.core.somaxconn=4096)\n" +
		"DEST            CONN/s  P99(us)\n" +
		"10.0.0.2:443     120.0       95\n" +
		"127.0.0.1:8080    30.0     1234\n"
	if got := buf.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderTableDefaultSortAndEmpty(t *testing.T) {
	f := testFrame()
	f.Sort = "latency_p99_us"
	f.Tiers, f.Header, f.Warnings = nil, nil, nil
	var buf bytes.Buffer
	if err := Render(&buf, f, Options{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 5 || lines[0] != "13:05:09  ports  interval 1.50s" {
		t.Fatalf("table:\n%s", buf.String())
	}
	for i, dest := range []string{"127.0.0.1:8080", "10.0.0.1:80", "10.0.0.2:443"} {
		if !strings.HasPrefix(lines[2+i], dest+" ") {
			t.Errorf("row %d = %q, want dest %s (sorted by frame default latency_p99_us)", i, lines[2+i], dest)
		}
	}
	// --sort on a string key sorts ascending.
	buf.Reset()
	if err := Render(&buf, f, Options{Sort: "dest", Top: 1}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\n10.0.0.1:80 ") || strings.Contains(buf.String(), "10.0.0.2") {
		t.Errorf("sort by dest, top 1:\n%s", buf.String())
	}

	f.Rows = []testRow{}
	buf.Reset()
	if err := Render(&buf, f, Options{}); err != nil {
		t.Fatal(err)
	}
	if want := "13:05:09  ports  interval 1.50s\n(no rows)\n"; buf.String() != want {
		t.Errorf("empty frame = %q, want %q", buf.String(), want)
	}
}

func TestRenderJSON(t *testing.T) {
	f := testFrame()
	var buf bytes.Buffer
	if err := Render(&buf, f, Options{Format: JSON, Sort: "latency_p99_us", Top: 2}); err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	var raw []string
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		objs = append(objs, m)
		raw = append(raw, sc.Text())
	}
	if len(objs) != 3 {
		t.Fatalf("got %d objects, want 1 interval + 2 rows:\n%s", len(objs), strings.Join(raw, "\n"))
	}
	iv := objs[0]
	if iv["type"] != "interval" || iv["tracer"] != "ports" || iv["interval_s"] != 1.5 ||
		iv["time"] != "2025-03-04T13:05:09.123456789Z" {
		t.Errorf("interval object: %s", raw[0])
	}
	if !strings.HasPrefix(raw[0], `{"type":"interval","tracer":"ports","time":`) ||
		!strings.Contains(raw[0], `"header":{"connects_per_s":120,"failures_per_s":0.25,"sockets":7}`) {
		t.Errorf("interval object key order: %s", raw[0])
	}
	if tiers, _ := iv["tiers"].(map[string]any); tiers["connect"] != "tracepoint" || tiers["accept"] != "raw_tp" {
		t.Errorf("tiers = %v", iv["tiers"])
	}
	ws, _ := iv["warnings"].([]any)
	if len(ws) != 1 || ws[0].(map[string]any)["code"] != "somaxconn_caps_backlog" ||
		ws[0].(map[string]any)["fix"] != "sysctl -w net.core.somaxconn=4096" {
		t.Errorf("warnings = %v", iv["warnings"])
	}

	wantRows := []struct {
		dest               string
		connects, failures float64
		p99                float64
	}{
		{"127.0.0.1:8080", 45, 2, 1234.5},
		{"10.0.0.1:80", 3, 1, 812.6},
	}
	for i, w := range wantRows {
		r := objs[1+i]
		if r["type"] != "row" || r["tracer"] != "ports" || r["interval_s"] != 1.5 || r["time"] != iv["time"] {
			t.Errorf("row %d envelope: %s", i, raw[1+i])
		}
		if r["dest"] != w.dest || r["connects"] != w.connects || r["failures"] != w.failures || r["latency_p99_us"] != w.p99 {
			t.Errorf("row %d = %s, want dest %s connects %v failures %v p99 %v", i, raw[1+i], w.dest, w.connects, w.failures, w.p99)
		}
		if _, ok := r["Hidden"]; ok {
			t.Errorf("row %d has json:\"-\" field: %s", i, raw[1+i])
		}
		if len(r) != 9 {
			t.Errorf("row %d has %d keys, want 9: %s", i, len(r), raw[1+i])
		}
	}
	if !strings.HasPrefix(raw[1], `{"type":"row","tracer":"ports","time":"2025-03-04T13:05:09.123456789Z","interval_s":1.5,"dest":"127.0.0.1:8080","connects":45,`) {
		t.Errorf("row key order: %s", raw[1])
	}
}

func TestRenderJSONEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := Render(&buf, Frame{Tracer: "sched", Interval: time.Second}, Options{Format: JSON}); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"interval","tracer":"sched","time":"0001-01-01T00:00:00Z","interval_s":1,"tiers":{},"header":{},"warnings":[]}` + "\n"
	if buf.String() != want {
		t.Errorf("got  %s\nwant %s", buf.String(), want)
	}
}

func TestRenderErrors(t *testing.T) {
	type bad struct {
		Type string `json:"type"`
	}
	for name, f := range map[string]Frame{
		"not a slice":  {Rows: testRow{}},
		"reserved key": {Rows: []bad{{"x"}}},
	} {
		if err := Render(&bytes.Buffer{}, f, Options{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	err := Render(&bytes.Buffer{}, testFrame(), Options{Sort: "nope"})
	if err == nil || !strings.Contains(err.Error(), "unknown sort key") {
		t.Errorf("unknown sort key: err = %v", err)
	}
}

func TestValidateSort(t *testing.T) {
	for _, rt := range []any{testRow{}, &testRow{}, []testRow(nil), []*testRow{}} {
		if err := ValidateSort(rt, "connects_per_s"); err != nil {
			t.Errorf("ValidateSort(%T, connects_per_s) = %v", rt, err)
		}
		if err := ValidateSort(rt, ""); err != nil {
			t.Errorf("ValidateSort(%T, \"\") = %v", rt, err)
		}
	}
	err := ValidateSort([]testRow{}, "latency")
	want := `unknown sort key "latency": want one of dest, connects, failures, connects_per_s, latency_p99_us`
	if err == nil || err.Error() != want {
		t.Errorf("ValidateSort unknown key = %v, want %s", err, want)
	}
	if err := ValidateSort(42, "x"); err == nil {
		t.Error("ValidateSort(int) = nil")
	}
}

func TestPointerRows(t *testing.T) {
	type row struct {
		Name string `json:"name" col:"NAME"`
		N    *int   `json:"n" col:"N"`
	}
	one := 1
	var buf bytes.Buffer
	if err := Render(&buf, Frame{Tracer: "t", Rows: []*row{{"a", &one}, nil, {"b", nil}}}, Options{}); err != nil {
		t.Fatal(err)
	}
	got := buf.String()[strings.Index(buf.String(), "\n")+1:]
	if want := "NAME  N\na     1\nb     -\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestSortPointers: a pointer to a number sorts as the number, and nil (not
// measured) after every value.
func TestSortPointers(t *testing.T) {
	type row struct {
		Name string   `json:"name" col:"NAME"`
		P99  *float64 `json:"p99" col:"P99,%.0f"`
	}
	one, three := 1.0, 3.0
	var buf bytes.Buffer
	rows := []row{{"a", nil}, {"b", &one}, {"c", &three}, {"d", nil}}
	if err := Render(&buf, Frame{Tracer: "t", Rows: rows}, Options{Sort: "p99"}); err != nil {
		t.Fatal(err)
	}
	got := buf.String()[strings.Index(buf.String(), "\n")+1:]
	if want := "NAME  P99\nc       3\nb       1\na       -\nd       -\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
