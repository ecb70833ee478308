/* agent-sim web page: the insights' HTML — findings tables (GET /api/insights),
 * an endpoint's time-breakdown bar (GET /api/breakdown) and the findings list
 * above a trace's waterfall.
 *
 * Loaded before app.js, which calls window.agentSimInsights(u) once with its
 * formatting helpers (esc, enc, fmtDur, fmtClock, resourceHref, traceHref,
 * svcColor) and uses the returned findingsHtml/breakdownHtml/traceFindingsHtml.
 */
"use strict";
window.agentSimInsights = function (u) {
  var esc = u.esc, enc = u.enc, fmtDur = u.fmtDur, fmtClock = u.fmtClock, resourceHref = u.resourceHref,
    traceHref = u.traceHref, svcColor = u.svcColor;
  var KINDS = { n_plus_one_db: "N+1 queries", n_plus_one_http: "N+1 HTTP calls", slow_query: "Slow query",
    error_group: "Error" };

  function kindBadge(kind) {
    return '<span class="badge kind ' + esc(kind) + '">' + esc(KINDS[kind] || kind) + "</span>";
  }

  /* GET /api/insights rows (worst first) as a table; the first 20. */
  function findingsHtml(rows, empty) {
    var h = ["<h2>Findings</h2>"];
    if (!rows.length) return h[0] + '<p class="empty" data-testid="no-findings">' + esc(empty) + "</p>";
    h.push('<table class="grid" data-testid="findings-table"><thead><tr><th>Kind</th><th>Finding</th><th>Endpoint</th>',
      "<th class=num>Count</th><th class=num>Total time</th><th>Last seen</th><th>Example</th></tr></thead><tbody>");
    rows.slice(0, 20).forEach(function (f) {
      var ex = f.example_trace_ids[0];
      h.push('<tr data-testid="finding-row" data-kind="' + esc(f.kind) + '" data-fingerprint="' + esc(f.fingerprint) + '"' +
        (f.kind === "error_group" ? ' class="is-error"' : "") + "><td>" + kindBadge(f.kind) + "</td>",
        '<td class="res" data-testid="finding-title">' + esc(f.title) + "</td>",
        '<td class="res"><a href="' + esc(resourceHref(f.service, f.resource)) + '" data-testid="finding-endpoint">' +
        esc(f.service) + " · " + esc(f.resource) + "</a></td>",
        '<td class="num" data-testid="finding-count">' + esc(f.count) + "</td>",
        '<td class="num">' + esc(fmtDur(f.total_duration_ns)) + "</td>",
        "<td>" + esc(fmtClock(f.last_seen_ns)) + "</td>",
        "<td>" + (ex ? '<a class="mono" data-testid="finding-example" href="' + esc(traceHref(ex)) + '">' +
          esc(ex.slice(-16)) + "</a>" : "") + "</td></tr>");
    });
    h.push("</tbody></table>");
    if (rows.length > 20) h.push('<p class="muted small">' + (rows.length - 20) + " more: <code>agent-sim insights</code></p>");
    return h.join("");
  }

  /* GET /api/breakdown rows as one stacked bar (exclusive time per service and span type) and its legend. */
  function breakdownHtml(rows) {
    if (!rows.length) {
      return '<p class="muted" data-testid="no-breakdown">No breakdown: this resource is not an endpoint ' +
        "(its spans run inside other requests).</p>";
    }
    var bar = ['<div class="bd-bar" data-testid="breakdown-bar" role="img" aria-label="Exclusive time per service and span type">'];
    var legend = ['<ul class="bd-legend">'];
    rows.forEach(function (b) {
      var pct = (100 * b.share).toFixed(1);
      var label = b.service + " " + (b.span_type || "-");
      bar.push('<div class="bd-seg" data-testid="breakdown-segment" data-service="' + esc(b.service) + '" data-type="' +
        esc(b.span_type) + '" data-share="' + esc(b.share) + '" style="width:' + (100 * b.share).toFixed(3) + "%;background:" +
        svcColor(b.service) + '" title="' + esc(label + ": " + pct + " %, " + fmtDur(b.exclusive_ns)) + '"></div>');
      legend.push('<li data-testid="breakdown-item"><span class="dot" style="background:' + svcColor(b.service) + '"></span>' +
        esc(b.service) + ' <span class="muted">' + esc(b.span_type || "-") + "</span> " + esc(pct) + " % · " +
        esc(fmtDur(b.exclusive_ns)) + "</li>");
    });
    return bar.join("") + "</div>" + legend.join("") + "</ul>";
  }

  /* The trace's findings above its waterfall; each selects its first span. */
  function traceFindingsHtml(found, traceId) {
    if (!found.length) return "";
    return '<ul class="trace-findings" data-testid="trace-findings">' + found.map(function (f) {
      return '<li data-testid="trace-finding" data-kind="' + esc(f.kind) + '"><a href="#/trace/' + enc(traceId) +
        "/span/" + enc(f.span_ids[0] || "") + '">' + kindBadge(f.kind) + " " + esc(f.title) + "</a> " +
        '<span class="muted" data-testid="trace-finding-spans">' + f.span_ids.length + " spans marked</span></li>";
    }).join("") + "</ul>";
  }

  return { findingsHtml: findingsHtml, breakdownHtml: breakdownHtml, traceFindingsHtml: traceFindingsHtml };
};
