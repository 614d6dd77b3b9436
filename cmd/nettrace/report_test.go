package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/bundle/bundletest"
)

func TestReportCommand(t *testing.T) {
	tmp := t.TempDir()
	a, b := filepath.Join(tmp, "before"), filepath.Join(tmp, "after")
	bundletest.Write(t, a, bundletest.Options{Somaxconn: "10", Overflows: 5, Connects: 100, Complete: true})
	bundletest.Write(t, b, bundletest.Options{Somaxconn: "4096", Connects: 100, Complete: true})

	// One run: DIR/report.html, its path printed.
	r := run(t, nil, "report", a)
	want := filepath.Join(a, "report.html")
	if r.code != 0 || r.stdout != want+"\n" {
		t.Fatalf("report %s: exit %d, stdout %q (want %q), stderr %q", a, r.code, r.stdout, want, r.stderr)
	}
	page, err := os.ReadFile(want)
	if err != nil || !bytes.Contains(page, []byte(`data-headline="listen.listen_overflows"`)) || bytes.Contains(page, []byte(`id="differences"`)) {
		t.Errorf("one-run report: err %v, %d bytes", err, len(page))
	}

	// Two runs: ./report-A-vs-B.html in the working directory.
	cwd := t.TempDir()
	cmd := exec.Command(binary, "report", a, b)
	cmd.Dir = cwd
	out, err := cmd.Output()
	if err != nil || string(out) != "report-before-vs-after.html\n" {
		t.Fatalf("report A B: %v, stdout %q", err, out)
	}
	page, err = os.ReadFile(filepath.Join(cwd, "report-before-vs-after.html"))
	if err != nil || bytes.Count(page, []byte(`<polyline class="series" data-run="1"`)) == 0 ||
		!bytes.Contains(page, []byte("<td>setting net.core.somaxconn</td><td>10</td><td>4096</td>")) {
		t.Errorf("two-run report: err %v, %d bytes", err, len(page))
	}
	if ents, _ := os.ReadDir(cwd); len(ents) != 1 {
		t.Errorf("report left %d files in the directory, want 1", len(ents))
	}

	// -o - writes the page to stdout.
	r = run(t, nil, "report", "-o", "-", a, b)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "<!DOCTYPE html>") {
		t.Errorf("report -o -: exit %d, stdout starts %.40q", r.code, r.stdout)
	}
	o := filepath.Join(tmp, "x.html")
	if r := run(t, nil, "report", "-o", o, b); r.code != 0 || r.stdout != o+"\n" {
		t.Errorf("report -o %s: exit %d, stdout %q", o, r.code, r.stdout)
	}
}

func TestReportBadInput(t *testing.T) {
	tmp := t.TempDir()
	a := filepath.Join(tmp, "a")
	bundletest.Write(t, a, bundletest.Options{})
	oneLineError(t, run(t, nil, "report"), 2, "report takes one or two record directories, got 0")
	oneLineError(t, run(t, nil, "report", a, a, a), 2, "report takes one or two record directories, got 3")
	oneLineError(t, run(t, nil, "report", filepath.Join(tmp, "nope")), 1, "no such directory")
	oneLineError(t, run(t, nil, "report", tmp), 1, "no meta.json (not a nettrace record)")
	if err := os.Remove(filepath.Join(a, "listen.ndjson")); err != nil {
		t.Fatal(err)
	}
	oneLineError(t, run(t, nil, "report", a), 1, "listen.ndjson is missing")
	c := filepath.Join(tmp, "c")
	bundletest.Write(t, c, bundletest.Options{})
	oneLineError(t, run(t, nil, "report", "-o", filepath.Join(tmp, "no", "dir.html"), c), 1, "create report: ")
}
