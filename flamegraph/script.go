package flamegraph

// script is the SVG's interactive part: zoom, search, info line.
const script = `"use strict";
var details, searchbtn, unzoombtn, matchedtxt, icbtn, frames, searching = false, ignorecase = false, term = null;
function init(evt) {
	details = document.getElementById("details").firstChild;
	searchbtn = document.getElementById("search");
	unzoombtn = document.getElementById("unzoom");
	matchedtxt = document.getElementById("matched");
	icbtn = document.getElementById("ignorecase");
	frames = Array.prototype.slice.call(document.getElementById("frames").children).map(function (g) {
		var r = g.querySelector("rect");
		return {g: g, r: r, t: g.querySelector("text"), fill: r.getAttribute("fill"),
			x: parseFloat(r.getAttribute("x")), w: parseFloat(r.getAttribute("width")), y: parseFloat(r.getAttribute("y")),
			name: g.querySelector("title").textContent.replace(/ \([^(]*\)$/, "")};
	});
}
function frameOf(node) {
	while (node && node.parentNode) {
		if (node.parentNode.id == "frames") return node;
		node = node.parentNode;
	}
	return null;
}
function find(g) { for (var i = 0; i < frames.length; i++) if (frames[i].g === g) return frames[i]; return null; }
function place(f, x, w) {
	f.r.setAttribute("x", x.toFixed(2));
	f.r.setAttribute("width", w.toFixed(2));
	f.t.setAttribute("x", (x + 3).toFixed(2));
	var n = Math.floor((w - 3) / (fontsize * fontwidth));
	f.t.textContent = n < 3 ? "" : (f.name.length <= n ? f.name : f.name.substring(0, n - 2) + "..");
}
function zoom(z) {
	var full = frames[0].w, ratio = full / z.w, eps = 0.0001;
	unzoombtn.classList.remove("hide");
	frames.forEach(function (f) {
		var ancestor = inverted ? f.y < z.y : f.y > z.y;
		f.g.classList.remove("hide", "parent");
		if (f.x <= z.x + eps && f.x + f.w >= z.x + z.w - eps && ancestor) {
			f.g.classList.add("parent");
			place(f, xpad, full);
		} else if (f.x >= z.x - eps && f.x + f.w <= z.x + z.w + eps && !ancestor) {
			place(f, xpad + (f.x - z.x) * ratio, f.w * ratio);
		} else {
			f.g.classList.add("hide");
		}
	});
	if (searching) search(term);
}
function unzoom() {
	unzoombtn.classList.add("hide");
	frames.forEach(function (f) { f.g.classList.remove("hide", "parent"); place(f, f.x, f.w); });
	if (searching) search(term);
}
function resetSearch() {
	frames.forEach(function (f) { f.r.setAttribute("fill", f.fill); });
	searching = false;
	searchbtn.classList.remove("show");
	searchbtn.firstChild.nodeValue = "Search";
	matchedtxt.classList.add("hide");
}
function searchPrompt() {
	if (searching) { resetSearch(); return; }
	var t = prompt("Enter a search term (regexp allowed, eg: ^ext4_)" + (ignorecase ? ", ignoring case" : ""), "");
	if (t != null) search(t);
}
function search(t) {
	var re;
	try { re = new RegExp(t, ignorecase ? "i" : ""); } catch (e) { alert(e); return; }
	term = t;
	var spans = [];
	frames.forEach(function (f) {
		f.r.setAttribute("fill", f.fill);
		if (f.g.classList.contains("hide") || !re.test(f.name)) return;
		f.r.setAttribute("fill", "rgb(230,0,230)");
		spans.push([parseFloat(f.r.getAttribute("x")), parseFloat(f.r.getAttribute("width"))]);
	});
	searching = true;
	searchbtn.classList.add("show");
	searchbtn.firstChild.nodeValue = "Reset Search";
	// The matched share counts nested matches once.
	spans.sort(function (a, b) { return a[0] - b[0]; });
	var sum = 0, end = -1;
	spans.forEach(function (s) {
		var lo = Math.max(s[0], end), hi = s[0] + s[1];
		if (hi > lo) { sum += hi - lo; end = hi; }
	});
	matchedtxt.classList.remove("hide");
	matchedtxt.firstChild.nodeValue = "Matched: " + (100 * sum / frames[0].w).toFixed(1) + "%";
}
window.addEventListener("click", function (e) {
	var g = frameOf(e.target);
	if (g) { zoom(find(g)); return; }
	if (e.target.id == "unzoom") unzoom();
	else if (e.target.id == "search") searchPrompt();
	else if (e.target.id == "ignorecase") { ignorecase = !ignorecase; icbtn.classList.toggle("show", ignorecase); if (searching) search(term); }
}, false);
window.addEventListener("mouseover", function (e) {
	var g = frameOf(e.target);
	if (g) details.nodeValue = "Function: " + g.querySelector("title").textContent;
}, false);
window.addEventListener("mouseout", function (e) { if (frameOf(e.target)) details.nodeValue = " "; }, false);
window.addEventListener("keydown", function (e) {
	if (e.keyCode === 114 || (e.ctrlKey && e.keyCode === 70)) { e.preventDefault(); searchPrompt(); }
	else if (e.keyCode === 27) { resetSearch(); unzoom(); }
}, false);`
