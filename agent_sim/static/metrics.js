/* agent-sim web page: the Metrics view and a service page's metrics panel.
 *
 *   #/metrics[/<name>[/<by tag key or ->[/<agg>[/<range>]]]]
 *
 * Loaded before app.js, which calls window.agentSimMetrics.render(r, h) for
 * that route and .servicePanel(service, h) at the end of a service page; ``h``
 * carries app.js's helpers (view, api, esc, enc, setCrumbs, setState,
 * showError, isCurrent). Reads /api/metrics and /api/metrics/query only.
 */
"use strict";
(function () {
  var RANGES = [["15m", 900, 10], ["1h", 3600, 30], ["4h", 14400, 120], ["24h", 86400, 600], ["7d", 604800, 3600],
    ["30d", 2592000, 14400]];
  var AGGS = ["avg", "sum", "min", "max", "p50", "p95", "p99"];
  var COLORS = ["#3d5afe", "#d93b3b", "#2e8b57", "#f29d0c", "#8e44ad", "#16a3b8", "#6b7385", "#c2185b"];

  function range(key) {
    for (var i = 0; i < RANGES.length; i++) if (RANGES[i][0] === key) return RANGES[i];
    return RANGES[1];
  }

  function fmt(v) {
    if (v == null || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e6)) return v.toExponential(2);
    return String(Math.round(v * 1000) / 1000);
  }

  function clock(s) {
    var d = new Date(s * 1000);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  /* Several series as polylines over [since, until]; y from 0 (or the minimum, when negative) to the maximum. */
  function lineChart(series, since, until, width, height, esc, testid) {
    var W = Math.max(Math.round(width), 200), H = height, padL = 56, padB = 20, padT = 8, padR = 8;
    var lo = 0, hi = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (p[1] > hi) hi = p[1];
        if (p[1] < lo) lo = p[1];
      });
    });
    if (hi === lo) hi = lo + 1;
    var x = function (t) {
      return padL + (t - since) / Math.max(until - since, 1) * (W - padL - padR);
    };
    var y = function (v) {
      return H - padB - (v - lo) / (hi - lo) * (H - padB - padT);
    };
    var out = ['<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" role="img" data-testid="' +
      testid + '">'];
    out.push('<line x1="' + padL + '" y1="' + (H - padB) + '" x2="' + (W - padR) + '" y2="' + (H - padB) +
      '" stroke="#c9cedb"/>');
    out.push('<text x="' + (padL - 6) + '" y="' + (padT + 10) + '" font-size="11" fill="#6b7385" text-anchor="end">' +
      esc(fmt(hi)) + "</text>");
    out.push('<text x="' + (padL - 6) + '" y="' + (H - padB) + '" font-size="11" fill="#6b7385" text-anchor="end">' +
      esc(fmt(lo)) + "</text>");
    if (H > 80) {
      out.push('<text x="' + padL + '" y="' + (H - 4) + '" font-size="11" fill="#6b7385">' + clock(since) + "</text>");
      out.push('<text x="' + (W - padR) + '" y="' + (H - 4) + '" font-size="11" fill="#6b7385" text-anchor="end">' +
        clock(until) + "</text>");
    }
    series.forEach(function (s, i) {
      var pts = s.points.map(function (p) {
        return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
      });
      var color = COLORS[i % COLORS.length];
      if (pts.length === 1) {
        out.push('<circle cx="' + pts[0].split(",")[0] + '" cy="' + pts[0].split(",")[1] + '" r="3" fill="' + color + '"/>');
      } else {
        out.push('<polyline fill="none" stroke="' + color + '" stroke-width="1.6" points="' + pts.join(" ") + '"/>');
      }
    });
    out.push("</svg>");
    return out.join("");
  }

  function seriesLabel(s) {
    var keys = Object.keys(s.tags);
    return keys.length ? keys.map(function (k) {
      return k + ":" + (s.tags[k] === "" ? "(none)" : s.tags[k]);
    }).join(",") : "all";
  }

  function href(h, name, by, agg, rangeKey) {
    return "#/metrics/" + h.enc(name) + "/" + h.enc(by || "-") + "/" + agg + "/" + rangeKey;
  }

  function select(id, options, chosen, esc) {
    return '<select id="' + id + '" data-testid="' + id + '">' + options.map(function (o) {
      var value = Array.isArray(o) ? o[0] : o, label = Array.isArray(o) ? o[1] : o;
      return '<option value="' + esc(value) + '"' + (value === chosen ? " selected" : "") + ">" + esc(label) + "</option>";
    }).join("") + "</select>";
  }

  function render(r, h) {
    var p = r.params || [];
    var name = p[0] || "", by = p[1] && p[1] !== "-" ? p[1] : "", agg = AGGS.indexOf(p[2]) >= 0 ? p[2] : "avg";
    var rg = range(p[3]);
    h.setCrumbs([{ text: "Metrics" }]);
    document.title = (name || "Metrics") + " · agent-sim";
    h.api("/api/metrics").then(function (list) {
      if (!h.isCurrent()) return;
      var esc = h.esc;
      var meta = list.filter(function (m) {
        return m.name === name;
      })[0];
      var out = ['<h1>Metrics</h1>'];
      if (!list.length) {
        out.push('<p class="empty" data-testid="no-metrics">No metrics yet. Send DogStatsD to the receiver ' +
          "(UDP 127.0.0.1:8125 by default), run checks with <code>--checks DIR</code>, or send traces " +
          "(their stats are the <code>trace.*</code> metrics).</p>");
        h.view.innerHTML = out.join("");
        h.setState("ready", "metrics");
        return;
      }
      out.push('<form class="summary" data-testid="metrics-form">',
        "<label>Metric " + select("metric-name", [["", "choose…"]].concat(list.map(function (m) {
          return [m.name, m.name + " (" + m.type + ")"];
        })), name, esc) + "</label> ",
        "<label>Group by " + select("metric-by", [["-", "nothing"]].concat((meta ? meta.tag_keys : []).map(function (k) {
          return [k, k];
        })), by || "-", esc) + "</label> ",
        "<label>Aggregate " + select("metric-agg", AGGS, agg, esc) + "</label> ",
        "<label>Range " + select("metric-range", RANGES.map(function (x) {
          return x[0];
        }), rg[0], esc) + "</label></form>");
      out.push('<div id="metric-chart" data-testid="metric-chart-box">' +
        (name ? '<p class="muted">Loading…</p>' : '<p class="muted">Choose a metric.</p>') + "</div>");
      h.view.innerHTML = out.join("");
      ["metric-name", "metric-by", "metric-agg", "metric-range"].forEach(function (id) {
        document.getElementById(id).addEventListener("change", function () {
          var chosen = document.getElementById("metric-name").value;
          if (!chosen) return;
          location.hash = href(h, chosen, id === "metric-name" ? "-" : document.getElementById("metric-by").value,
            document.getElementById("metric-agg").value, document.getElementById("metric-range").value);
        });
      });
      if (!name) {
        h.setState("ready", "metrics");
        return;
      }
      var until = Math.floor(Date.now() / 1000), since = until - rg[1];
      var q = { name: name, agg: agg, since: since, until: until, rollup: rg[2] };
      if (by) q.by = by;
      return h.api("/api/metrics/query", q).then(function (data) {
        if (!h.isCurrent()) return;
        var box = document.getElementById("metric-chart");
        if (!data.series.length) {
          box.innerHTML = '<p class="empty" data-testid="metric-empty">No points for ' + esc(name) + " in the last " +
            esc(rg[0]) + ".</p>";
        } else {
          var legend = data.series.map(function (s, i) {
            var last = s.points[s.points.length - 1];
            return '<li data-testid="metric-series" data-group="' + esc(seriesLabel(s)) + '" data-last="' + last[1] +
              '"><span class="dot" style="background:' + COLORS[i % COLORS.length] + '"></span>' + esc(seriesLabel(s)) +
              ' <span class="muted">last ' + esc(fmt(last[1])) + "</span></li>";
          });
          box.innerHTML = lineChart(data.series, since, until, box.clientWidth - 20, 260, esc, "metric-chart") +
            '<ul class="small" style="list-style:none;padding:0;columns:3" data-testid="metric-legend">' +
            legend.join("") + "</ul>" +
            '<p class="muted small">' + esc(agg) + " per " + rg[2] + " s · " + data.series.length + " series · " +
            '<code>agent-sim metrics ' + esc(name) + (by ? " --by " + esc(by) : "") + " --agg " + esc(agg) + "</code></p>";
        }
        h.setState("ready", "metrics");
      });
    }).catch(function (err) {
      if (h.isCurrent()) h.showError(err);
    });
  }

  /* A service page's metrics: those whose contexts carry service:<name> (trace.* are on the page already). */
  function servicePanel(service, h) {
    var box = document.createElement("section");
    box.setAttribute("data-testid", "service-metrics");
    h.view.appendChild(box);
    h.api("/api/metrics", { tags: "service:" + service }).then(function (list) {
      list = list.filter(function (m) {
        return m.name.indexOf("trace.") !== 0;
      });
      if (!h.isCurrent() || !list.length) return;
      var until = Math.floor(Date.now() / 1000), since = until - 3600;
      return Promise.all(list.slice(0, 8).map(function (m) {
        return h.api("/api/metrics/query", { name: m.name, tags: "service:" + service, since: since, until: until,
          rollup: 30 }).then(function (data) {
          return { meta: m, series: data.series };
        });
      })).then(function (charts) {
        if (!h.isCurrent()) return;
        var esc = h.esc;
        var out = ["<h2>Metrics tagged service:" + esc(service) + "</h2>",
          '<div style="display:flex;flex-wrap:wrap;gap:16px">'];
        charts.forEach(function (c) {
          var last = c.series.length ? c.series[0].points[c.series[0].points.length - 1][1] : null;
          out.push('<div data-testid="service-metric" data-name="' + esc(c.meta.name) + '"><a href="' +
            esc(href(h, c.meta.name, "", "avg", "1h")) + '">' + esc(c.meta.name) + "</a> " +
            '<span class="muted small">' + esc(c.meta.type) + " · last " + esc(fmt(last)) + "</span><br>" +
            lineChart(c.series, since, until, 320, 70, esc, "service-metric-chart") + "</div>");
        });
        out.push("</div>");
        if (list.length > 8) out.push('<p class="muted small">' + (list.length - 8) + " more in the Metrics view.</p>");
        box.innerHTML = out.join("");
      });
    }).catch(function () {
      /* the service page stands without its metrics */
    });
  }

  window.agentSimMetrics = { render: render, servicePanel: servicePanel, lineChart: lineChart };
})();
