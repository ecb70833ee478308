/* Monitors page (static/monitors.html): each monitor's state, its groups'
 * evaluated values over time with the threshold lines, a state strip per
 * group, and the events (transitions, notifications) newest first.
 * Data: GET /api/monitors, /api/monitors/<id>, /api/monitors/events;
 * "Evaluate now" is POST /api/monitors/evaluate. Reloads every 10 s. */
"use strict";
(function () {
  var view = document.getElementById("view");
  var COLORS = { "OK": "#2e9e5b", "Warn": "#e0a100", "Alert": "#d2443a", "No Data": "#8a8f98" };

  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function api(path, method) {
    return fetch(path, { method: method || "GET" }).then(function (r) {
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }
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

  function render(details, events) {
    var h = ["<h1>Monitors</h1>"];
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
    view.innerHTML = h.join("");
    document.body.setAttribute("data-state", "ready");
  }

  function load() {
    return api("/api/monitors").then(function (rows) {
      return Promise.all([Promise.all(rows.map(function (r) { return api("/api/monitors/" + r.id); })),
        api("/api/monitors/events")]);
    }).then(function (got) { render(got[0], got[1]); }, function (err) {
      view.innerHTML = '<p class="error-box" role="alert">Cannot load monitors: ' + esc(err.message) + "</p>";
      document.body.setAttribute("data-state", "error");
    });
  }
  document.getElementById("refresh").addEventListener("click", function () {
    document.body.setAttribute("data-state", "loading");
    api("/api/monitors/evaluate", "POST").then(load);
  });
  setInterval(function () { if (!document.hidden) load(); }, 10000);
  load();
})();
