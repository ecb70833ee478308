/* The monitors view (#/monitors): each monitor's state, its groups'
 * evaluated values over time with the threshold lines, a state strip per
 * group, and the events (transitions, notifications) newest first.
 * Loaded before app.js, which calls window.agentSimMonitors.render(r, h) with
 * its helpers (view, api, esc, setCrumbs, setState, showError, isCurrent).
 * Data: GET /api/monitors, /api/monitors/<id>, /api/monitors/events;
 * "Evaluate now" is POST /api/monitors/evaluate. */
"use strict";
(function () {
  var COLORS = { "OK": "#2e9e5b", "Warn": "#e0a100", "Alert": "#d2443a", "No Data": "#8a8f98" };
  var esc;
  function badge(state) {
    return '<span class="badge" data-testid="monitor-state" style="background:' + (COLORS[state] || "#888") +
      ';color:#fff">' + esc(state) + "</span>";
  }
  function clock(t) {
    var d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  /* One SVG: a line per group over the evaluations kept, threshold lines, a state strip per group. */
  function chart(m) {
    var groups = Object.keys(m.group_details).sort();
    var samples = [];
    groups.forEach(function (g) { samples = samples.concat(m.group_details[g].samples); });
    if (!samples.length) return '<p class="empty">Not evaluated yet.</p>';
    var th = m.thresholds, lines = [];
    [["critical", "#d2443a", ""], ["warning", "#e0a100", ""], ["critical_recovery", "#d2443a", "4 3"],
      ["warning_recovery", "#e0a100", "4 3"]].forEach(function (x) {
      if (th[x[0]] != null) lines.push({ name: x[0], value: th[x[0]], color: x[1], dash: x[2] });
    });
    var values = samples.map(function (s) { return s[1]; }).filter(function (v) { return v != null; })
      .concat(lines.map(function (l) { return l.value; }));
    var t0 = Math.min.apply(null, samples.map(function (s) { return s[0]; }));
    var t1 = Math.max.apply(null, samples.map(function (s) { return s[0]; }));
    var lo = Math.min(0, Math.min.apply(null, values)), hi = Math.max.apply(null, values) * 1.1 || 1;
    var W = 640, H = 160, strip = 10, top = 8;
    var x = function (t) { return 40 + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - 50); };
    var y = function (v) { return top + (1 - (v - lo) / (hi - lo || 1)) * (H - top - 4); };
    var out = ['<svg class="monitor-chart" data-testid="monitor-chart" width="' + W + '" height="' +
      (H + 6 + groups.length * (strip + 2)) + '" role="img" aria-label="values and thresholds">'];
    lines.forEach(function (l) {
      out.push('<line data-testid="threshold-line" data-threshold="' + l.name + '" x1="40" x2="' + (W - 10) + '" y1="' +
        y(l.value) + '" y2="' + y(l.value) + '" stroke="' + l.color + '" stroke-dasharray="' + l.dash + '"/>',
        '<text x="0" y="' + (y(l.value) + 4) + '" font-size="10">' + esc(l.value) + "</text>");
    });
    groups.forEach(function (g, i) {
      var pts = m.group_details[g].samples.filter(function (s) { return s[1] != null; })
        .map(function (s) { return x(s[0]).toFixed(1) + "," + y(s[1]).toFixed(1); });
      if (pts.length) {
        out.push('<polyline data-testid="group-line" fill="none" stroke-width="1.5" stroke="hsl(' + (i * 67 % 360) +
          ',55%,45%)" points="' + pts.join(" ") + '"><title>' + esc(g) + "</title></polyline>");
      }
      var sy = H + 6 + i * (strip + 2), ss = m.group_details[g].samples;
      ss.forEach(function (s, k) {
        var x0 = x(s[0]), x1 = k + 1 < ss.length ? x(ss[k + 1][0]) : x0 + 4;
        out.push('<rect data-testid="state-cell" data-state="' + esc(s[2]) + '" x="' + x0.toFixed(1) + '" y="' + sy +
          '" width="' + Math.max(2, x1 - x0).toFixed(1) + '" height="' + strip + '" fill="' + COLORS[s[2]] +
          '"><title>' + esc(g + " " + s[2] + " at " + clock(s[0])) + "</title></rect>");
      });
    });
    out.push("</svg>");
    return out.join("");
  }

  function page(details, events) {
    var h = ['<h1>Monitors <button id="evaluate" type="button" data-testid="evaluate">Evaluate now</button></h1>'];
    if (!details.length) h.push('<p class="empty">No monitors: agent-sim serve --monitors FILE, or POST /api/monitors.</p>');
    details.forEach(function (m) {
      h.push('<section class="monitor" data-testid="monitor" data-monitor-id="' + m.id + '"><h2>' + badge(m.overall_state) +
        " " + esc(m.name) + "</h2>", '<p class="mono">' + esc(m.query) + "</p>");
      if (m.error) h.push('<p class="error-box">' + esc(m.error) + "</p>");
      var groups = Object.keys(m.groups).sort();
      if (groups.length) {
        h.push('<p data-testid="monitor-groups">' + groups.map(function (g) {
          return esc(g) + " " + badge(m.groups[g]);
        }).join(" · ") + "</p>");
      }
      h.push(chart(m), "</section>");
    });
    h.push("<h2>Events</h2>");
    if (!events.length) h.push('<p class="empty">No state change yet.</p>');
    else {
      h.push('<table class="grid" data-testid="events"><thead><tr><th>Time</th><th>Event</th><th>Message</th>' +
        "<th>Delivery</th></tr></thead><tbody>");
      events.slice().reverse().forEach(function (e) {
        var sent = e.muted ? "muted (downtime)" : Object.keys(e.deliveries).map(function (k) {
          return k + ": " + e.deliveries[k];
        }).join(", ") || "log";
        h.push('<tr data-testid="event-row"><td>' + esc(clock(e.time)) + "</td><td>" + esc(e.title) + "</td><td>" +
          esc(e.body) + "</td><td>" + esc(sent) + "</td></tr>");
      });
      h.push("</tbody></table>");
    }
    return h.join("");
  }

  function render(r, h) {
    esc = h.esc;
    h.setCrumbs([{ text: "Monitors" }]);
    document.title = "Monitors · agent-sim";
    h.api("/api/monitors").then(function (rows) {
      return Promise.all([Promise.all(rows.map(function (m) { return h.api("/api/monitors/" + m.id); })),
        h.api("/api/monitors/events")]);
    }).then(function (got) {
      if (!h.isCurrent()) return;
      h.view.innerHTML = page(got[0], got[1]);
      document.getElementById("evaluate").addEventListener("click", function () {
        h.setState("loading", "monitors");
        fetch("/api/monitors/evaluate", { method: "POST" }).then(function () { render(r, h); }, h.showError);
      });
      h.setState("ready", "monitors");
    }, function (err) {
      if (h.isCurrent()) h.showError(err);
    });
  }

  window.agentSimMonitors = { render: render };
})();
