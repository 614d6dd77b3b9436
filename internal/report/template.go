package report

import "html/template"

// page is the report. Its one script records load errors (and resources the
// Content-Security-Policy blocked) and what rendered into <body>'s data-*
// attributes, so a headless browser's DOM dump shows whether the page
// rendered cleanly.
var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<script>
(function () {
	var errs = [];
	window.addEventListener("error", function (e) {
		var t = e.target;
		errs.push(t && t !== window && t.tagName ? "load of " + t.tagName.toLowerCase() + " failed" : String(e.message));
	}, true);
	document.addEventListener("securitypolicyviolation", function (e) { errs.push("blocked " + e.blockedURI); });
	window.addEventListener("load", function () {
		var charts = 0, flames = 0;
		document.querySelectorAll("svg.chart").forEach(function (s) {
			var r = s.getBoundingClientRect();
			if (r.width > 0 && r.height > 0) charts++;
		});
		document.querySelectorAll("img.flamegraph").forEach(function (i) {
			if (i.complete && i.naturalWidth > 0) flames++; else errs.push("flame graph " + i.alt + " did not render");
		});
		var b = document.body, c = document.getElementById("charts").getBoundingClientRect();
		b.setAttribute("data-charts-box", [c.left, c.top, c.width, c.height].map(Math.round).join(","));
		b.setAttribute("data-charts-rendered", charts);
		b.setAttribute("data-flamegraphs-rendered", flames);
		b.setAttribute("data-errors", errs.join("; "));
		b.setAttribute("data-loaded", "true");
	});
})();
</script>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222; margin: 0 auto; padding: 16px 24px; max-width: 1280px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
.run { border: 1px solid #ddd; border-top: 5px solid var(--c); border-radius: 4px; padding: 10px 14px; }
.run dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
.run dt { color: #666; }
.run dd { margin: 0; word-break: break-word; }
.status-complete { color: #2a7d2a; font-weight: 600; }
.incomplete { background: #fde8e8; border: 2px solid #c62828; color: #8e1c1c; font-weight: 700; padding: 8px 12px; margin: 8px 0; border-radius: 4px; }
.differ { background: #fff6e0; border: 2px solid #e0a400; padding: 8px 12px; border-radius: 4px; margin: 16px 0; }
.differ table { margin-top: 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 12px; }
svg.chart { width: 100%; max-width: 600px; height: auto; font: 11px system-ui, sans-serif; background: #fff; }
svg.chart .title { font-size: 13px; font-weight: 600; }
svg.chart .id { fill: #888; font-weight: normal; font-size: 11px; }
svg.chart .unit { fill: #555; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td { background: #fff6e0; }
.changed, tr.differs td.changed { background: #fde8e8; font-weight: 600; }
.st-warn { color: #a66b00; } .st-bad { color: #c62828; font-weight: 600; } .st-ok { color: #2a7d2a; }
.warning .fix { font-family: ui-monospace, monospace; background: #f4f4f4; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
pre { background: #f7f7f7; padding: 6px; max-height: 240px; overflow: auto; }
img.flamegraph { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; }
.swatch { display: inline-block; width: 12px; height: 12px; background: var(--c); vertical-align: middle; margin-right: 4px; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>

<section id="runs" class="runs">
{{- range .Runs}}
<div class="run" id="run-{{.Index}}" data-run="{{.Index}}" style="--c: {{.Color}}">
<h3><span class="swatch" style="--c: {{.Color}}"></span>Run {{.Letter}}: {{.Name}}</h3>
{{- if .Incomplete}}
<div class="incomplete" id="incomplete-{{.Index}}">{{.Incomplete}}</div>
{{- end}}
<dl>
<dt>status</dt><dd class="status-{{.Meta.Status}}">{{.Meta.Status}}{{if .Meta.StopReason}} ({{.Meta.StopReason}}){{end}}</dd>
<dt>directory</dt><dd><code>{{.Dir}}</code></dd>
<dt>host</dt><dd>{{.Meta.Host}}</dd>
<dt>kernel</dt><dd>{{.Meta.Kernel}} {{.Meta.KernelVersion}} ({{.Meta.Arch}})</dd>
<dt>CPUs</dt><dd>{{.Meta.CPUs}}</dd>
<dt>network namespace</dt><dd>{{.Meta.Netns}}{{if .Meta.NetnsPath}} ({{.Meta.NetnsPath}}){{end}}</dd>
<dt>start</dt><dd>{{.Start}}</dd>
<dt>end</dt><dd>{{.End}}</dd>
<dt>duration</dt><dd>{{.Duration}}{{if .Meta.IntervalS}}, intervals of {{.Meta.IntervalS}}s{{end}}</dd>
<dt>command</dt><dd>{{if .Command}}<code>{{.Command}}</code>{{else}}<span class="muted">none</span>{{end}}</dd>
{{- if .Exit}}
<dt>exit code</dt><dd class="exit">{{.Exit}}</dd>
{{- end}}
<dt>tracers (tiers)</dt><dd>{{range .Tiers}}<div>{{.}}</div>{{end}}</dd>
<dt>nettrace</dt><dd>{{.Meta.NettraceVersion}}</dd>
{{- if .Meta.Errors}}
<dt>errors</dt><dd class="st-bad">{{range .Meta.Errors}}<div>{{.}}</div>{{end}}</dd>
{{- end}}
</dl>
{{- if or .Stdout .Stderr}}
<details><summary>command output (tail)</summary>
{{- if .Stdout}}<h3>stdout</h3><pre>{{.Stdout}}</pre>{{end}}
{{- if .Stderr}}<h3>stderr</h3><pre>{{.Stderr}}</pre>{{end}}
</details>
{{- end}}
</div>
{{- end}}
</section>

{{- if .Differences}}
<section id="differences" class="differ">
<strong>Conditions differ: comparing these runs' figures is not fair</strong> unless the difference below is the one change under test.
<table>
<tr><th>condition</th><th>A</th><th>B</th></tr>
{{- range .Differences}}
<tr class="difference"><td>{{.What}}</td><td>{{.A}}</td><td>{{.B}}</td></tr>
{{- end}}
</table>
</section>
{{- end}}

<section id="charts">
<h2>Headline figures</h2>
{{- if .Charts}}
<div class="grid">
{{- range .Charts}}
{{.}}
{{- end}}
</div>
{{- else}}
<p class="muted">No tracer recorded any interval.</p>
{{- end}}
</section>

<section id="warnings">
<h2>Warnings</h2>
{{- if .Warnings}}
{{- range .Runs}}
{{- if .Warnings}}
<h3><span class="swatch" style="--c: {{.Color}}"></span>Run {{.Letter}}: {{.Name}}</h3>
<table class="warnings" data-run="{{.Index}}">
<tr><th>tracer</th><th>code</th><th>message (last)</th><th>fix</th><th>intervals</th><th>first seen</th></tr>
{{- range .Warnings}}
<tr class="warning" data-code="{{.Code}}"><td>{{.Tracer}}</td><td><code>{{.Code}}</code></td><td>{{.Message}}</td><td class="fix">{{.Fix}}</td><td class="num">{{.Intervals}}</td><td class="num">{{.First}}</td></tr>
{{- end}}
</table>
{{- end}}
{{- end}}
{{- else}}
<p class="muted">No warning fired.</p>
{{- end}}
</section>

<section id="settings">
<h2>Settings</h2>
{{- if .Settings}}
<p class="muted">Before and after each record (the doctor audit). <span class="changed">Red cells</span> changed during the run{{if gt (len .Runs) 1}}; <span style="background:#fff6e0">yellow rows</span> differ between the runs{{end}}.</p>
<table id="settings-table">
<tr><th>setting</th>{{range .Runs}}<th>{{.Letter}} before</th><th>{{.Letter}} after</th>{{end}}<th>note</th></tr>
{{- range .Settings}}
<tr class="setting{{if .Differs}} differs{{end}}{{if .Changed}} changed-row{{end}}" data-name="{{.Name}}">
<td><code>{{.Name}}</code></td>
{{- range .Cells}}<td class="st-{{.Status}}">{{.Before}}</td><td{{if .Changed}} class="changed"{{end}}>{{.After}}</td>{{end}}
<td class="muted">{{.Note}}</td></tr>
{{- end}}
</table>
{{- else}}
<p class="muted">The bundle has no settings audit.</p>
{{- end}}
{{- if .Counters}}
<h3 style="margin-top:14px">Counters that moved during the run</h3>
<table id="counters-table">
<tr><th>counter</th>{{range .Runs}}<th>{{.Letter}} change</th>{{end}}</tr>
{{- range .Counters}}
<tr><td><code>{{.Name}}</code></td>{{range .Delta}}<td class="num">{{.}}</td>{{end}}</tr>
{{- end}}
</table>
{{- end}}
</section>

{{- if .Flames}}
<section id="flamegraphs">
<h2>Flame graphs</h2>
<p class="muted">Static images; the bundle's profile.svg is the interactive one (zoom, search).</p>
{{- range .Flames}}
<figure><figcaption>{{.Title}}</figcaption><img class="flamegraph" data-run="{{.Run}}" alt="{{.Title}}" src="{{.Src}}"></figure>
{{- end}}
</section>
{{- end}}
</body>
</html>
`))
