package report

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/bundle/bundletest"
)

// chromium finds Debian's headless-capable browser. Without it the test
// skips, except in CI (.ci/run installs it), where it fails. The 6.1 VM
// (scripts/vmtest.sh) has no browser: the host runs this test.
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("NETTRACE_VMTEST") == "1" {
		t.Skip("no browser in the test VM; the host runs this test")
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (CI=true: .ci/run installs it)")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// runChromium runs headless Chromium with args in its own process group,
// killing the whole group at the end or after 60s.
func runChromium(t *testing.T, bin string, args ...string) (stdout []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	home := t.TempDir()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--hide-scrollbars", "--user-data-dir=" + filepath.Join(home, "profile")}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("chromium %v: timed out after 60s\n%s", args, se.String())
	}
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, se.String())
	}
	return so.Bytes()
}

// TestReportInChromium is issue 8's "done when": the two-run report opens
// in headless Chromium without errors, its DOM after the page's script ran
// has the structure the report promises, and a screenshot shows the charts.
func TestReportInChromium(t *testing.T) {
	bin := chromium(t)
	a := load(t, "somaxconn10", bundletest.Options{Somaxconn: "10", Overflows: 7, Connects: 100, Complete: true, Profile: foldedA, ProfileSVG: true})
	b := load(t, "somaxconn4096", bundletest.Options{Somaxconn: "4096", Overflows: 2, Connects: 120, Profile: foldedB})
	page := render(t, a, b)
	file := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(file, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	nCharts := len(parseCharts(t, page))

	dom := string(runChromium(t, bin, "--window-size=1280,2000", "--dump-dom", "file://"+file))
	body := regexp.MustCompile(`<body([^>]*)>`).FindStringSubmatch(dom)
	if body == nil {
		t.Fatalf("no <body> in the DOM dump:\n%.2000s", dom)
	}
	attr := func(name string) string {
		m := regexp.MustCompile(name + `="([^"]*)"`).FindStringSubmatch(body[1])
		if m == nil {
			t.Fatalf("<body> has no %s after load (did the script run?): %s", name, body[1])
		}
		return m[1]
	}
	if attr("data-loaded") != "true" {
		t.Error("page did not finish loading")
	}
	if e := attr("data-errors"); e != "" {
		t.Errorf("page errors: %s", e)
	}
	if n, _ := strconv.Atoi(attr("data-charts-rendered")); n != nChartsOrFail(t, nCharts) {
		t.Errorf("%d charts laid out with a size, want %d", n, nCharts)
	}
	if n, _ := strconv.Atoi(attr("data-flamegraphs-rendered")); n != 3 {
		t.Errorf("%d flame graph images decoded, want 3 (A, B, differential)", n)
	}
	var chartsBox image.Rectangle
	if _, err := fmt.Sscanf(attr("data-charts-box"), "%d,%d,%d,%d", &chartsBox.Min.X, &chartsBox.Min.Y, &chartsBox.Max.X, &chartsBox.Max.Y); err != nil {
		t.Fatalf("data-charts-box: %v", err)
	}
	chartsBox.Max = chartsBox.Min.Add(chartsBox.Max)
	for _, want := range []string{`<section id="runs"`, `<section id="differences"`, `<section id="charts">`, `<section id="warnings">`,
		`<section id="settings">`, `<section id="flamegraphs">`, `id="incomplete-1"`, `data-name="net.core.somaxconn"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("DOM lacks %s", want)
		}
	}
	if got := strings.Count(dom, `<polyline class="series"`); got != 2*nCharts {
		t.Errorf("DOM has %d series polylines, want %d (two per chart)", got, 2*nCharts)
	}

	shot := filepath.Join(t.TempDir(), "shot.png")
	runChromium(t, bin, "--screenshot="+shot, "--window-size=1280,2000", "file://"+file)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode screenshot: %v", err)
	}
	if sz := img.Bounds().Size(); sz.X != 1280 || sz.Y != 2000 {
		t.Fatalf("screenshot is %v, want 1280x2000", sz)
	}
	checkScreenshot(t, img, chartsBox)
	if os.Getenv("REPORT_SCREENSHOT") != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(os.Getenv("REPORT_SCREENSHOT"), data, 0o644)
	}
}

func nChartsOrFail(t *testing.T, n int) int {
	t.Helper()
	if n < 10 {
		t.Fatalf("report has %d charts, want the 11 headlines of ports, listen and sched", n)
	}
	return n
}

// checkScreenshot checks the chart section's box in the screenshot (as the
// page's script measured it at the same window size): drawn, not blank, with
// both runs' series colours in it.
func checkScreenshot(t *testing.T, img image.Image, box image.Rectangle) {
	t.Helper()
	r := box.Intersect(img.Bounds())
	if r.Dx() < 600 || r.Dy() < 600 {
		t.Fatalf("chart section %v is not on the 1280x2000 screenshot (want at least 600x600 of it)", box)
	}
	want := make([][3]int, len(Colors))
	for i, c := range Colors {
		v, _ := strconv.ParseUint(c[1:], 16, 32)
		want[i] = [3]int{int(v >> 16), int(v >> 8 & 0xff), int(v & 0xff)}
	}
	ink := 0
	found := make([]int, len(Colors))
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			p := [3]int{int(cr >> 8), int(cg >> 8), int(cb >> 8)}
			if p[0] < 230 || p[1] < 230 || p[2] < 230 {
				ink++
			}
			for i, w := range want {
				if abs(p[0]-w[0]) <= 8 && abs(p[1]-w[1]) <= 8 && abs(p[2]-w[2]) <= 8 {
					found[i]++
				}
			}
		}
	}
	if share := float64(ink) / float64(r.Dx()*r.Dy()); share < 0.02 {
		t.Errorf("chart section %v is %.2f%% non-white: charts not drawn", r, 100*share)
	}
	for i, n := range found {
		// Constant series are horizontal 2px lines: hundreds of pixels each.
		if n < 1000 {
			t.Errorf("chart section has %d pixels of run %d's series colour %s, want the lines drawn", n, i, Colors[i])
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
