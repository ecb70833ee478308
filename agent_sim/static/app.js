/* agent-sim web page: services -> resources -> traces -> waterfall.
 *
 * Plain JS, no build step, no network beyond the receiver's own JSON API
 * (DESIGN.md "Receiver"): ids are strings, times are integer nanoseconds.
 * Every view has a URL (hash routing):
 *   #/                                   services + recent traces
 *   #/service/<svc>                      the service's resources + recent traces
 *   #/service/<svc>/resource/<res>       one resource: latency, requests per 10 s, its traces
 *   #/trace/<id>[/span/<span_id>]        waterfall + the selected span's details
 *   #/metrics[/...]                      metrics charts (static/metrics.js)
 *   #/monitors                           monitors, their states and events (static/monitors.js)
 * The landing, service and resource views also list findings (GET /api/insights);
 * the resource view shows where its time goes (GET /api/breakdown); the
 * waterfall marks the spans of the trace's findings. "Errors only" filters
 * every trace list (error=1: traces with an error span).
 * Views are built as one HTML string per render (a 5,000-span waterfall is one
 * innerHTML assignment), and body[data-state] says loading/ready/error so
 * tests and humans can tell when a view is complete.
 */
"use strict";
(function () {
  var view = document.getElementById("view");
  var crumbs = document.getElementById("crumbs");
  var generation = 0; // bumps per navigation; stale async results are dropped
  var current = null; // the trace currently rendered, to select spans without re-rendering
  var errorsOnly = false; // the "Errors only" filter of the trace lists

  // -- formatting ------------------------------------------------------------
  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  // Same rules as agent_sim/cli.py fmt_duration: 3 significant digits.
  function sig3(x) {
    return x >= 99.95 ? x.toFixed(0) : x.toPrecision(3);
  }
  function fmtDur(ns) {
    if (ns == null) return "-";
    if (Math.abs(ns) < 999.5) return ns.toFixed(0) + " ns";
    var t = sig3(ns / 1e3);
    if (+t < 1000) return t + " µs";
    t = sig3(ns / 1e6);
    if (+t < 1000) return t + " ms";
    return sig3(ns / 1e9) + " s";
  }
  function fmtMs(ns) {
    return ns == null ? "-" : (ns / 1e6).toFixed(2);
  }
  function fmtRate(errors, hits) {
    if (!hits) return "-";
    var r = (100 * errors) / hits;
    return (r === 0 || r >= 10 ? r.toFixed(0) : r.toFixed(1)) + " %";
  }
  function pad(n, w) {
    n = String(n);
    while (n.length < w) n = "0" + n;
    return n;
  }
  function fmtClock(ns) {
    var ms = Math.floor(ns / 1e6);
    var d = new Date(ms);
    return pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) + "." + pad(ms % 1000, 3);
  }
  function hue(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 360;
  }
  function svcColor(name) {
    return "hsl(" + hue(name || "-") + ",55%,52%)";
  }
  function enc(s) {
    return encodeURIComponent(s);
  }
  function serviceHref(s) {
    return "#/service/" + enc(s);
  }
  function resourceHref(s, r) {
    return "#/service/" + enc(s) + "/resource/" + enc(r);
  }
  function traceHref(id) {
    return "#/trace/" + enc(id);
  }

  // -- data --------------------------------------------------------------------
  function api(path, params) {
    var q = [];
    if (params) {
      Object.keys(params).forEach(function (k) {
        if (params[k] != null && params[k] !== "") q.push(enc(k) + "=" + enc(params[k]));
      });
    }
    var url = path + (q.length ? "?" + q.join("&") : "");
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (resp) {
      if (!resp.ok) {
        var err = new Error(resp.status + " " + resp.statusText + " for " + url);
        err.status = resp.status;
        throw err;
      }
      return resp.json();
    });
  }

  // -- routing -----------------------------------------------------------------
  function parseHash(hash) {
    var parts = (hash || "").replace(/^#\/?/, "").split("/").filter(function (p) {
      return p !== "";
    });
    try {
      parts = parts.map(decodeURIComponent);
    } catch (e) {
      return { view: "services" };
    }
    if (parts[0] === "service" && parts.length >= 2) {
      if (parts[2] === "resource" && parts.length >= 4) return { view: "resource", service: parts[1], resource: parts[3] };
      return { view: "service", service: parts[1] };
    }
    if (parts[0] === "metrics") return { view: "metrics", params: parts.slice(1) };
    if (parts[0] === "monitors") return { view: "monitors" };
    if (parts[0] === "trace" && parts.length >= 2) {
      return { view: "trace", id: parts[1], span: parts[2] === "span" ? parts[3] : null };
    }
    return { view: "services" };
  }

  function setCrumbs(items) {
    var html = ['<a href="#/" data-testid="crumb">Services</a>'];
    items.forEach(function (it) {
      html.push('<span class="sep" aria-hidden="true">›</span>');
      html.push(it.href ? '<a href="' + esc(it.href) + '" data-testid="crumb">' + esc(it.text) + "</a>"
        : '<span data-testid="crumb" aria-current="page">' + esc(it.text) + "</span>");
    });
    crumbs.innerHTML = html.join("");
  }

  function setState(state, name) {
    document.body.setAttribute("data-state", state);
    if (name) document.body.setAttribute("data-view", name);
  }

  function showError(err) {
    var msg = err && err.status === 404 ? "Not found." : "Cannot load data from the receiver: " + (err && err.message);
    view.innerHTML = '<p class="error-box" role="alert" data-testid="error">' + esc(msg) + "</p>";
    setState("error");
  }

  /* Render the view named by the URL hash. ``quiet`` (live refresh) keeps
   * the current view visible instead of dimming it while data loads. */
  function route(quiet) {
    var r = parseHash(location.hash);
    var gen = ++generation;
    if (r.view === "trace" && current && current.id === r.id && current.gen) {
      selectSpan(r.span, "center");
      return;
    }
    current = null;
    if (quiet !== true) setState("loading", r.view);
    var done = function (fn) {
      return function (data) {
        if (gen === generation) fn(data, r, gen);
      };
    };
    var fail = function (err) {
      if (gen === generation) showError(err);
    };
    if (r.view === "services") {
      setCrumbs([]);
      document.title = "agent-sim";
      Promise.all([api("/api/services"), api("/api/traces", { limit: 20, error: errorsOnly ? 1 : null }),
        api("/api/insights")]).then(done(renderServices), fail);
    } else if (r.view === "service") {
      setCrumbs([{ text: r.service }]);
      document.title = r.service + " · agent-sim";
      Promise.all([api("/api/stats", { service: r.service }),
        api("/api/traces", { service: r.service, limit: 25, error: errorsOnly ? 1 : null }),
        api("/api/insights", { service: r.service })]).then(done(renderService), fail);
    } else if (r.view === "resource") {
      setCrumbs([{ text: r.service, href: serviceHref(r.service) }, { text: r.resource }]);
      document.title = r.resource + " · agent-sim";
      Promise.all([
        api("/api/stats", { service: r.service }),
        api("/api/traces", { service: r.service, resource: r.resource, limit: 50, error: errorsOnly ? 1 : null }),
        api("/api/insights", { service: r.service, resource: r.resource }),
        api("/api/breakdown", { service: r.service, resource: r.resource }),
      ]).then(done(renderResource), fail);
    } else if (r.view === "metrics") {
      window.agentSimMetrics.render(r, helpers(gen));
    } else if (r.view === "monitors") {
      window.agentSimMonitors.render(r, helpers(gen));
    } else {
      setCrumbs([{ text: "trace " + r.id }]);
      document.title = "trace " + r.id + " · agent-sim";
      var t0 = performance.now();
      api("/api/traces/" + enc(r.id)).then(done(function (data) {
        document.body.setAttribute("data-fetch-ms", (performance.now() - t0).toFixed(1));
        renderTrace(data, r, gen, t0);
      }), fail);
    }
  }

  // -- tables ------------------------------------------------------------------
  function tracesTable(rows, caption, empty) {
    if (!rows.length) return '<p class="empty" data-testid="no-traces">' + esc(empty || "No traces stored.") + "</p>";
    var h = ['<table class="grid" data-testid="traces-table"><caption>' + esc(caption) + "</caption>",
      "<thead><tr><th>Start</th><th>Service</th><th>Resource</th><th class=num>Duration</th>",
      "<th class=num>Spans</th><th>Status</th><th>Trace id</th></tr></thead><tbody>"];
    rows.forEach(function (t) {
      h.push('<tr data-testid="trace-row" data-trace-id="' + esc(t.trace_id) + '" data-href="' + esc(traceHref(t.trace_id)) +
        '"' + (t.error ? ' class="is-error"' : "") + ">",
        "<td>" + esc(fmtClock(t.start_ns)) + "</td>",
        '<td><span class="dot" style="background:' + svcColor(t.service) + '"></span>' + esc(t.service) + "</td>",
        '<td class="res"><a href="' + esc(traceHref(t.trace_id)) + '" data-testid="trace-link">' + esc(t.resource) + "</a></td>",
        '<td class="num" data-testid="trace-duration">' + esc(fmtDur(t.duration_ns)) + "</td>",
        '<td class="num" data-testid="trace-span-count">' + esc(t.span_count) + "</td>",
        "<td>" + (t.error ? '<span class="badge err">error</span>' : '<span class="badge ok">ok</span>') + "</td>",
        '<td class="mono">' + esc(t.trace_id) + "</td></tr>");
    });
    h.push("</tbody></table>");
    return h.join("");
  }

  function renderServices(data) {
    var services = data[0].slice().sort(function (a, b) {
      return b.hits - a.hits || (a.service < b.service ? -1 : 1);
    });
    var h = ["<h1>Services</h1>"];
    if (!services.length) {
      h.push('<p class="empty" data-testid="no-services">No traces received yet. Point a tracer at this receiver ' +
        "(<code>TRACER_AGENT_URL=" + esc(location.origin) + "</code>).</p>");
    } else {
      h.push('<table class="grid" data-testid="services-table"><thead><tr><th>Service</th><th class=num>Hits</th>',
        "<th class=num>Errors</th><th class=num>Error rate</th><th class=num>p95</th></tr></thead><tbody>");
      services.forEach(function (s) {
        h.push('<tr data-testid="service-row" data-service="' + esc(s.service) + '" data-href="' + esc(serviceHref(s.service)) +
          '"><td><span class="dot" style="background:' + svcColor(s.service) + '"></span>',
          '<a href="' + esc(serviceHref(s.service)) + '" data-testid="service-name">' + esc(s.service) + "</a></td>",
          '<td class="num" data-testid="service-hits">' + esc(s.hits) + "</td>",
          '<td class="num" data-testid="service-errors">' + esc(s.errors) + "</td>",
          '<td class="num' + (s.errors ? " err-text" : "") + '" data-testid="service-error-rate">' + esc(fmtRate(s.errors, s.hits)) + "</td>",
          '<td class="num" data-testid="service-p95">' + esc(fmtDur(s.p95_ns)) + "</td></tr>");
      });
      h.push("</tbody></table>");
    }
    h.push(insights.findingsHtml(data[2], "No findings: no N+1 queries or calls, slow queries or errors seen."));
    h.push(tracesHeading(), tracesTable(data[1], "Newest first, all services"));
    view.innerHTML = h.join("");
    setState("ready", "services");
  }

  function resourceRowsFor(stats, service) {
    return stats.filter(function (r) {
      return r.service === service;
    }).sort(function (a, b) {
      return b.hits - a.hits || (a.resource < b.resource ? -1 : 1);
    });
  }

  function renderService(data, r) {
    var rows = resourceRowsFor(data[0], r.service);
    var hits = 0, errors = 0;
    rows.forEach(function (x) {
      hits += x.top_level_hits != null ? x.top_level_hits : x.hits;
      errors += x.errors;
    });
    var h = ['<h1><span class="dot big" style="background:' + svcColor(r.service) + '"></span>' + esc(r.service) + "</h1>"];
    h.push('<p class="summary" data-testid="service-summary">' + rows.length + " resources · " + hits + " top-level hits · " +
      errors + " errors</p>");
    if (!rows.length) {
      h.push('<p class="empty" data-testid="no-resources">No stats for this service.</p>');
    } else {
      h.push('<table class="grid" data-testid="resources-table"><thead><tr><th>Resource</th><th>Name</th><th>Type</th>',
        "<th class=num>Hits</th><th class=num>Errors</th><th class=num>Error rate</th><th class=num>p50</th>",
        "<th class=num>p95</th><th class=num>p99</th></tr></thead><tbody>");
      rows.forEach(function (x) {
        var href = resourceHref(r.service, x.resource);
        h.push('<tr data-testid="resource-row" data-resource="' + esc(x.resource) + '" data-name="' + esc(x.name) +
          '" data-href="' + esc(href) + '"><td class="res"><a href="' + esc(href) + '" data-testid="resource-name">' +
          esc(x.resource) + "</a></td>",
          "<td>" + esc(x.name) + "</td><td>" + esc(x.type || "") + "</td>",
          '<td class="num" data-testid="resource-hits">' + esc(x.hits) + "</td>",
          '<td class="num" data-testid="resource-errors">' + esc(x.errors) + "</td>",
          '<td class="num' + (x.errors ? " err-text" : "") + '" data-testid="resource-error-rate">' + esc(fmtRate(x.errors, x.hits)) + "</td>",
          '<td class="num" data-testid="resource-p50">' + esc(fmtMs(x.p50_ns)) + " ms</td>",
          '<td class="num" data-testid="resource-p95">' + esc(fmtMs(x.p95_ns)) + " ms</td>",
          '<td class="num" data-testid="resource-p99">' + esc(fmtMs(x.p99_ns)) + " ms</td></tr>");
      });
      h.push("</tbody></table>");
    }
    h.push(insights.findingsHtml(data[2], "No findings in " + r.service + "."));
    h.push(tracesHeading(), tracesTable(data[1], "Newest first, traces with a span of " + r.service,
      "No stored trace has a span of " + r.service + "."));
    view.innerHTML = h.join("");
    if (window.agentSimMetrics) window.agentSimMetrics.servicePanel(r.service, helpers(generation));
    setState("ready", "service");
  }

  var insights = window.agentSimInsights({ esc: esc, enc: enc, fmtDur: fmtDur, fmtClock: fmtClock,
    resourceHref: resourceHref, traceHref: traceHref, svcColor: svcColor });

  /* What static/metrics.js needs of this file. */
  function helpers(gen) {
    return { view: view, api: api, esc: esc, enc: enc, setCrumbs: setCrumbs, setState: setState, showError: showError,
      isCurrent: function () { return gen === generation; } };
  }

  // -- resource view and its requests-per-10 s chart ----------------------------
  var lastChart = { key: null, html: "" }; // shown while a live refresh reloads the chart
  var BUCKET_S = 10;
  var BUCKETS = 30;

  function renderResource(data, r, gen) {
    var rows = resourceRowsFor(data[0], r.service).filter(function (x) {
      return x.resource === r.resource;
    });
    var traces = data[1];
    var h = ["<h1 class=res-title data-testid=resource-title>" + esc(r.resource) + "</h1>"];
    h.push('<p class="summary">service <a href="' + esc(serviceHref(r.service)) + '">' + esc(r.service) + "</a></p>");
    if (!rows.length) h.push('<p class="empty">No stats for this resource.</p>');
    rows.forEach(function (x) {
      h.push('<div class="cards" data-testid="resource-stats" data-name="' + esc(x.name) + '">',
        card("Span name", esc(x.name) + (x.type ? ' <span class="muted">(' + esc(x.type) + ")</span>" : ""), "stat-name"),
        card("Hits", esc(x.hits), "stat-hits"),
        card("Errors", esc(x.errors), "stat-errors"),
        card("Error rate", esc(fmtRate(x.errors, x.hits)), "stat-error-rate"),
        card("p50", esc(fmtMs(x.p50_ns)) + " ms", "stat-p50"),
        card("p95", esc(fmtMs(x.p95_ns)) + " ms", "stat-p95"),
        card("p99", esc(fmtMs(x.p99_ns)) + " ms", "stat-p99"),
        "</div>");
    });
    h.push("<h2>Where the time goes</h2>", insights.breakdownHtml(data[3]));
    h.push(insights.findingsHtml(data[2], "No findings for this resource."));
    var chartKey = r.service + "\n" + r.resource;
    h.push('<h2>Requests per 10 s</h2><div id="chart" class="chart" data-testid="chart-box">' +
      (lastChart.key === chartKey ? lastChart.html : '<p class="muted">Loading…</p>') + "</div>");
    h.push(tracesHeading(), tracesTable(traces, "Newest first, traces with a span of this resource",
      "No stored trace has a span with this resource."));
    view.innerHTML = h.join("");
    loadSeries(r, traces).then(function (series) {
      if (gen !== generation) return;
      var box = document.getElementById("chart");
      box.innerHTML = chartSvg(series, box.clientWidth - 20);
      lastChart = { key: chartKey, html: box.innerHTML };
      setState("ready", "resource");
    }, function (err) {
      if (gen !== generation) return;
      document.getElementById("chart").innerHTML = '<p class="error-box">Chart unavailable: ' + esc(err.message) + "</p>";
      setState("ready", "resource");
    });
  }

  // -- findings, time breakdown (static/insights.js), errors-only filter ------------
  function tracesHeading() {
    return '<h2>Recent traces <label class="filter"><input type="checkbox" data-testid="errors-only"' +
      (errorsOnly ? " checked" : "") + "> Errors only</label></h2>";
  }

  view.addEventListener("change", function (ev) {
    if (ev.target.getAttribute("data-testid") !== "errors-only") return;
    errorsOnly = ev.target.checked;
    route(true);
  });

  function card(label, valueHtml, testid) {
    return '<div class="card"><div class="card-label">' + esc(label) + '</div><div class="card-value" data-testid="' +
      testid + '">' + valueHtml + "</div></div>";
  }

  /* The last 5 minutes in 10 s buckets. Preferred source: the proposed
   * GET /api/stats/series (one request, [{start_s, hits, errors}]) when /info
   * lists it; otherwise one /api/stats window per bucket (since/until are
   * epoch seconds), which uses only the documented API. If the newest trace is
   * older than the window, the window ends at that trace instead of now. */
  var endpoints = null; // from GET /info, fetched once

  function hasSeriesEndpoint() {
    if (!endpoints) {
      endpoints = api("/info").then(function (info) {
        return info.endpoints || [];
      }, function () {
        return [];
      });
    }
    return endpoints.then(function (list) {
      return list.indexOf("/api/stats/series") >= 0;
    });
  }

  function loadSeries(r, traces) {
    var now = Date.now() / 1000;
    var newest = traces.length ? (traces[0].start_ns + traces[0].duration_ns) / 1e9 : now;
    var end = Math.ceil((newest < now - BUCKET_S * BUCKETS ? newest : now) / BUCKET_S) * BUCKET_S;
    var start = end - BUCKET_S * BUCKETS;
    return hasSeriesEndpoint().then(function (yes) {
      if (!yes) return statsWindows(r, start, end);
      return api("/api/stats/series", { service: r.service, resource: r.resource, since: start, until: end, bucket_s: BUCKET_S })
        .then(function (rows) {
          return fillSeries(start, rows, "stats series");
        });
    });
  }

  function statsWindows(r, start, end) {
    var windows = [];
    for (var t = start; t < end; t += BUCKET_S) windows.push(t);
    return Promise.all(windows.map(function (t) {
      return api("/api/stats", { service: r.service, since: t, until: t + BUCKET_S }).then(function (rows) {
        var hits = 0, errors = 0;
        rows.forEach(function (x) {
          if (x.resource === r.resource) {
            hits += x.hits;
            errors += x.errors;
          }
        });
        return { start_s: t, hits: hits, errors: errors };
      });
    })).then(function (rows) {
      return fillSeries(start, rows, "stats windows");
    });
  }

  function fillSeries(start, rows, source) {
    var buckets = [];
    for (var i = 0; i < BUCKETS; i++) buckets.push({ start_s: start + i * BUCKET_S, hits: 0, errors: 0 });
    rows.forEach(function (x) {
      var i = Math.floor((x.start_s - start) / BUCKET_S);
      if (i >= 0 && i < BUCKETS) {
        buckets[i].hits += x.hits;
        buckets[i].errors += x.errors;
      }
    });
    return { buckets: buckets, source: source };
  }

  function chartSvg(series, width) {
    var W = Math.max(Math.round(width || 900), 300), H = 160, padL = 36, padB = 20, padT = 8;
    var b = series.buckets;
    var max = 1;
    b.forEach(function (x) {
      if (x.hits > max) max = x.hits;
    });
    var bw = (W - padL) / b.length;
    var scale = (H - padB - padT) / max;
    var total = 0;
    var parts = ['<svg width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" role="img" data-testid="hits-chart" aria-label="Requests per 10 seconds">'];
    parts.push('<line x1="' + padL + '" y1="' + (H - padB) + '" x2="' + W + '" y2="' + (H - padB) + '" class="axis"/>');
    parts.push('<text x="' + (padL - 6) + '" y="' + (padT + 10) + '" class="tick" text-anchor="end">' + max + "</text>");
    parts.push('<text x="' + (padL - 6) + '" y="' + (H - padB) + '" class="tick" text-anchor="end">0</text>');
    b.forEach(function (x, i) {
      total += x.hits;
      var hh = x.hits * scale, eh = x.errors * scale;
      var px = padL + i * bw + 1;
      var label = fmtClock(x.start_s * 1e9).slice(0, 8) + " — " + x.hits + " requests, " + x.errors + " errors";
      parts.push('<g data-testid="chart-bar" data-hits="' + x.hits + '" data-errors="' + x.errors + '" data-start="' + x.start_s +
        '"><title>' + esc(label) + "</title>",
        '<rect class="hit" x="' + px.toFixed(1) + '" y="' + (H - padB - hh).toFixed(1) + '" width="' + (bw - 2).toFixed(1) +
        '" height="' + hh.toFixed(1) + '"/>',
        x.errors ? '<rect class="errbar" x="' + px.toFixed(1) + '" y="' + (H - padB - eh).toFixed(1) + '" width="' +
          (bw - 2).toFixed(1) + '" height="' + eh.toFixed(1) + '"/>' : "",
        "</g>");
    });
    [[0, "start"], [Math.floor(b.length / 2), "middle"], [b.length - 1, "end"]].forEach(function (tick) {
      var i = tick[0];
      var x = tick[1] === "start" ? padL + i * bw : tick[1] === "end" ? padL + (i + 1) * bw : padL + i * bw + bw / 2;
      parts.push('<text class="tick" x="' + x.toFixed(1) + '" y="' + (H - 5) + '" text-anchor="' + tick[1] + '">' +
        fmtClock(b[i].start_s * 1e9).slice(0, 8) + "</text>");
    });
    parts.push("</svg>");
    parts.push('<p class="muted small" data-testid="chart-caption">' + total + " requests in the last " + (BUCKET_S * BUCKETS / 60) +
      ' min of data · <span class="legend hit"></span> hits <span class="legend errbar"></span> errors · source: ' +
      esc(series.source) + "</p>");
    return parts.join("");
  }

  // -- trace waterfall ------------------------------------------------------------
  /* Depth-first order, children by start time. Iterative: a deep chain
   * must not overflow the JS stack. Orphans (parent not received) are roots. */
  function treeOrder(spans) {
    var byId = Object.create(null), children = Object.create(null), roots = [];
    spans.forEach(function (s) {
      byId[s.span_id] = s;
    });
    spans.forEach(function (s) {
      var p = s.parent_id;
      if (p == null || !byId[p] || p === s.span_id) roots.push(s);
      else (children[p] || (children[p] = [])).push(s);
    });
    var cmp = function (a, b) {
      return b.start_ns - a.start_ns || (a.span_id < b.span_id ? 1 : -1);
    };
    var out = [], seen = Object.create(null);
    var stack = roots.sort(cmp).map(function (s) {
      return [s, 0];
    });
    while (stack.length) {
      var item = stack.pop(), s = item[0];
      if (seen[s.span_id]) continue;
      seen[s.span_id] = true;
      out.push({ span: s, depth: item[1] });
      var kids = children[s.span_id];
      if (kids) {
        kids.sort(cmp);
        for (var i = 0; i < kids.length; i++) stack.push([kids[i], item[1] + 1]);
      }
    }
    return out;
  }

  function renderTrace(trace, r, gen, t0) {
    var spans = trace.spans || [];
    var rows = treeOrder(spans);
    var start = Infinity, end = -Infinity, errors = 0;
    spans.forEach(function (s) {
      if (s.start_ns < start) start = s.start_ns;
      if (s.start_ns + s.duration_ns > end) end = s.start_ns + s.duration_ns;
      if (s.error) errors++;
    });
    var total = Math.max(end - start, 1);
    var root = rows.length ? rows[0].span : {};
    var marked = Object.create(null); // span id -> titles of the findings it is part of
    (trace.findings || []).forEach(function (f) {
      f.span_ids.forEach(function (id) {
        (marked[id] = marked[id] || []).push(f.title);
      });
    });
    var services = Object.create(null);
    spans.forEach(function (s) {
      services[s.service] = true;
    });

    var h = ['<h1 class="res-title">' + esc(root.resource || "") + "</h1>",
      '<p class="summary" data-testid="trace-summary"><span class="mono">' + esc(trace.trace_id) + "</span> · ",
      '<a href="' + esc(serviceHref(root.service || "")) + '">' + esc(root.service) + "</a> · " + esc(fmtDur(total)) + " · ",
      '<span data-testid="trace-span-total">' + spans.length + "</span> spans · " + errors + " errors · " +
      Object.keys(services).sort().map(function (name) {
        return '<span class="svc"><span class="dot" style="background:' + svcColor(name) + '"></span>' + esc(name) + "</span>";
      }).join(" ") + " · started " + esc(isFinite(start) ? fmtClock(start) : "-") + "</p>",
      insights.traceFindingsHtml(trace.findings || [], currentId()),
      '<div class="trace-layout"><div class="wf" data-testid="waterfall" role="table" aria-label="Spans">',
      '<div class="wf-head" role="row"><div class="lbl" role="columnheader">Span</div><div class="trk ticks" role="columnheader">'];
    for (var q = 0; q <= 4; q++) {
      h.push('<span style="left:' + q * 25 + '%">' + esc(fmtDur((total * q) / 4)) + "</span>");
    }
    h.push('</div><div class="dur" role="columnheader">Duration</div></div><div class="wf-body" id="wf-body" tabindex="0">');
    for (var i = 0; i < rows.length; i++) {
      var s = rows[i].span, d = rows[i].depth;
      var left = ((s.start_ns - start) / total) * 100;
      var width = Math.max((s.duration_ns / total) * 100, 0.15);
      if (left + width > 100) width = Math.max(100 - left, 0.15);
      var titles = marked[s.span_id];
      h.push('<div class="row', s.error ? " is-error" : "", titles ? " in-finding" : "",
        titles ? '" title="' + esc(titles.join("\n")) : "", '" role="row" data-testid="span-row" data-i="', i,
        '" data-span-id="', esc(s.span_id), '" data-depth="', d, '"><div class="lbl" role="cell" style="padding-left:',
        6 + Math.min(d, 40) * 14, 'px"><span class="dot" style="background:', svcColor(s.service), '"></span>',
        '<span class="nm" data-testid="span-name">', esc(s.name), '</span> <span class="res">', esc(s.resource),
        '</span></div><div class="trk" role="cell"><div class="bar" style="left:', left.toFixed(3), "%;width:",
        width.toFixed(3), "%;background:", s.error ? "var(--err)" : svcColor(s.service),
        '"></div></div><div class="dur" role="cell">', esc(fmtDur(s.duration_ns)), "</div></div>");
    }
    h.push('</div></div><aside class="details" id="details" data-testid="span-details" aria-label="Span details"></aside></div>');
    view.innerHTML = h.join("");
    current = { id: r.id, trace: trace, rows: rows, start: start, gen: gen, selected: -1 };
    var body = document.getElementById("wf-body");
    body.addEventListener("click", function (ev) {
      var row = ev.target.closest(".row");
      if (row) selectIndex(+row.getAttribute("data-i"), true);
    });
    body.addEventListener("keydown", function (ev) {
      if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
      ev.preventDefault();
      var next = Math.min(Math.max(current.selected + (ev.key === "ArrowDown" ? 1 : -1), 0), current.rows.length - 1);
      selectIndex(next, true);
    });
    // Initial selection: the span in the URL, else the first error, else the root.
    var initial = r.span;
    if (!initial) {
      for (var k = 0; k < rows.length; k++) {
        if (rows[k].span.error) {
          initial = rows[k].span.span_id;
          break;
        }
      }
    }
    selectSpan(initial || (rows.length ? rows[0].span.span_id : null), "center");
    requestAnimationFrame(function () {
      if (gen !== generation) return;
      document.body.setAttribute("data-render-ms", (performance.now() - t0).toFixed(1));
      setState("ready", "trace");
    });
  }

  function currentId() {
    return parseHash(location.hash).id || "";
  }

  function selectSpan(spanId, scroll) {
    if (!current) return;
    for (var i = 0; i < current.rows.length; i++) {
      if (current.rows[i].span.span_id === spanId) return selectIndex(i, scroll, true);
    }
    if (current.rows.length) selectIndex(0, false, true);
  }

  function selectIndex(i, scroll, fromRoute) {
    var body = document.getElementById("wf-body");
    if (!current || !body || i < 0 || i >= current.rows.length) return;
    var prev = body.querySelector(".row.selected");
    if (prev) prev.classList.remove("selected");
    var row = body.children[i];
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
    if (scroll) {
      // Scroll the waterfall only, not the page: keep the row in view, centred when it was out of sight.
      var top = row.offsetTop, bottom = top + row.offsetHeight;
      if (top < body.scrollTop || bottom > body.scrollTop + body.clientHeight) {
        body.scrollTop = top - (scroll === "center" ? body.clientHeight / 2 : top < body.scrollTop ? 0 : body.clientHeight - row.offsetHeight);
      }
    }
    current.selected = i;
    var s = current.rows[i].span;
    document.getElementById("details").innerHTML = detailsHtml(s, current.start);
    if (!fromRoute) {
      // Keep the selection addressable without re-rendering the waterfall.
      history.replaceState(null, "", traceHref(current.id) + "/span/" + enc(s.span_id));
    }
  }

  function kvTable(obj, testid) {
    var keys = Object.keys(obj || {}).sort();
    if (!keys.length) return '<p class="muted small">none</p>';
    return '<table class="kv" data-testid="' + testid + '">' + keys.map(function (k) {
      return '<tr><th scope="row">' + esc(k) + "</th><td>" + esc(obj[k]) + "</td></tr>";
    }).join("") + "</table>";
  }

  function detailsHtml(s, start) {
    var meta = s.meta || {};
    var h = ['<h3 data-testid="detail-name">' + esc(s.name) + "</h3>",
      '<p class="detail-res" data-testid="detail-resource">' + esc(s.resource) + "</p>",
      '<table class="kv"><tr><th>service</th><td data-testid="detail-service">' + esc(s.service) + "</td></tr>",
      "<tr><th>type</th><td>" + esc(s.type || "") + "</td></tr>",
      '<tr><th>duration</th><td data-testid="detail-duration">' + esc(fmtDur(s.duration_ns)) + "</td></tr>",
      "<tr><th>start</th><td>+" + esc(fmtDur(s.start_ns - start)) + " (" + esc(fmtClock(s.start_ns)) + ")</td></tr>",
      '<tr><th>span id</th><td class="mono" data-testid="detail-span-id">' + esc(s.span_id) + "</td></tr>",
      '<tr><th>parent id</th><td class="mono">' + esc(s.parent_id == null ? "— (root)" : s.parent_id) + "</td></tr>",
      "</table>"];
    if (s.error) {
      h.push('<div class="error-box" data-testid="detail-error"><strong>' + esc(meta["error.type"] || "error") + "</strong>",
        meta["error.message"] ? "<div>" + esc(meta["error.message"]) + "</div>" : "",
        meta["error.stack"] ? "<pre>" + esc(meta["error.stack"]) + "</pre>" : "", "</div>");
    }
    var rest = {};
    Object.keys(meta).forEach(function (k) {
      if (k !== "error.stack") rest[k] = meta[k];
    });
    h.push("<h4>Tags</h4>", kvTable(rest, "detail-meta"), "<h4>Metrics</h4>", kvTable(s.metrics, "detail-metrics"));
    return h.join("");
  }

  // -- wiring ---------------------------------------------------------------------------
  // Whole table rows are clickable; the inner <a> keeps them keyboard- and screen-reader-friendly.
  view.addEventListener("click", function (ev) {
    if (ev.target.closest("a")) return;
    var tr = ev.target.closest("tr[data-href]");
    if (tr) location.hash = tr.getAttribute("data-href");
  });
  document.getElementById("refresh").addEventListener("click", function () {
    current = null;
    route();
  });
  window.addEventListener("hashchange", function () {
    route();
  });
  // Live mode: re-fetch list views while idle; a trace does not change once shown.
  var live = document.getElementById("live");
  try {
    live.checked = localStorage.getItem("agent-sim-live") === "1";
  } catch (e) {
    /* storage may be disabled */
  }
  live.addEventListener("change", function () {
    try {
      localStorage.setItem("agent-sim-live", live.checked ? "1" : "0");
    } catch (e) {
      /* ignore */
    }
  });
  setInterval(function () {
    if (live.checked && document.body.getAttribute("data-state") === "ready" &&
        document.body.getAttribute("data-view") !== "trace" && !document.hidden) {
      route(true);
    }
  }, 3000);
  window.agentSim = { parseHash: parseHash, treeOrder: treeOrder, fmtDur: fmtDur, fmtRate: fmtRate };
  route();
})();
