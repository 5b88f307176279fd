// Lateral coordinator dashboard: polls /api/state every second and renders tables and SVG charts.
// Self-contained: no libraries, no network besides this coordinator.
"use strict";
(function () {
  const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#ff7b72", "#e3b341"];
  const POLL_MS = 1000;
  const colors = new Map();
  const $ = (id) => document.getElementById(id);

  function colorOf(key) {
    if (!colors.has(key)) colors.set(key, PALETTE[colors.size % PALETTE.length]);
    return colors.get(key);
  }
  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }
  function td(text, cls) { return el("td", { class: cls || "", text: text }); }
  const pct = (w) => (w * 100).toFixed(1) + "%";
  const ms = (v) => (v == null ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms");
  const num = (v, d) => (v == null ? "–" : Number(v).toFixed(d));
  const time = (t) => new Date(t).toLocaleTimeString([], { hour12: false });
  function replaceRows(tbody, rows, emptyText, cols) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, [el("td", { colspan: cols, text: emptyText })])]));
  }

  function renderEndpoints(state) {
    const rows = [];
    for (const s of state.services) {
      for (const e of s.endpoints) {
        const key = s.name + "/" + e.id;
        const c = e.current || {};
        const bar = el("div", { class: "bar" }, [
          el("span", { style: "width:" + Math.max(0, Math.min(100, e.weight * 100)) + "%;background:" + colorOf(key) }),
          el("b", { text: pct(e.weight) }),
        ]);
        const age = e.heartbeat_age_ms == null ? "never" : (e.heartbeat_age_ms / 1000).toFixed(1) + " s ago";
        rows.push(el("tr", { class: "endpoint", "data-service": s.name, "data-endpoint": e.id, "data-state": e.state,
                              "data-weight": String(e.weight), title: e.reason }, [
          td(s.name),
          el("td", {}, [el("span", { class: "swatch", style: "background:" + colorOf(key) }), e.id]),
          el("td", {}, [el("span", { class: "badge " + e.state, text: e.state })]),
          el("td", {}, [bar]),
          el("td", {}, [el("span", { class: "rule", text: e.rule }), el("div", { class: "sub", text: e.reason })]),
          td(c.in_flight == null ? "–" : String(c.in_flight), "num"),
          td(ms(c.p50_ms), "num"), td(ms(c.p99_ms), "num"),
          td(c.error_rate == null ? "–" : pct(c.error_rate), "num"),
          td(num(c.rps, 1), "num"),
          td(age, "num" + (e.stale ? " stale" : "")),
        ]));
      }
    }
    replaceRows($("endpoints"), rows, "no endpoints", 11);
  }

  // One SVG line chart: a polyline per endpoint over the shared time axis; data-points counts plotted points.
  function renderChart(svg, state, field, fixedMax) {
    const W = 400, H = 160, PAD = 4;
    const series = [];
    let t0 = Infinity, t1 = -Infinity, max = fixedMax || 0;
    for (const s of state.services) for (const e of s.endpoints) {
      const pts = (e.history || []).filter((p) => p[field] != null && isFinite(p[field]));
      if (!pts.length) continue;
      series.push({ key: s.name + "/" + e.id, id: e.id, pts });
      for (const p of pts) { t0 = Math.min(t0, p.t); t1 = Math.max(t1, p.t); if (!fixedMax) max = Math.max(max, p[field]); }
    }
    if (!(max > 0)) max = 1;
    const span = Math.max(1, t1 - t0);
    const ns = "http://www.w3.org/2000/svg";
    const children = [];
    for (let i = 1; i < 4; i++) {
      const y = PAD + (H - 2 * PAD) * i / 4;
      const line = document.createElementNS(ns, "line");
      line.setAttribute("class", "axis"); line.setAttribute("x1", 0); line.setAttribute("x2", W);
      line.setAttribute("y1", y); line.setAttribute("y2", y);
      children.push(line);
    }
    let total = 0;
    for (const s of series) {
      const poly = document.createElementNS(ns, "polyline");
      const xy = s.pts.map((p) => {
        const x = PAD + (W - 2 * PAD) * (p.t - t0) / span;
        const y = H - PAD - (H - 2 * PAD) * Math.min(p[field], max) / max;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      if (xy.length === 1) xy.push(xy[0].replace(/^[^,]+/, (W - PAD).toFixed(1)));
      poly.setAttribute("points", xy.join(" "));
      poly.setAttribute("stroke", colorOf(s.key));
      poly.setAttribute("data-endpoint", s.id);
      poly.setAttribute("data-points", String(s.pts.length));
      const title = document.createElementNS(ns, "title");
      title.textContent = s.key;
      poly.append(title);
      children.push(poly);
      total += s.pts.length;
    }
    svg.replaceChildren(...children);
    svg.setAttribute("data-points", String(total));
    svg.setAttribute("data-max", String(max));
    const cap = svg.parentElement && svg.parentElement.querySelector("figcaption");
    if (cap) {
      if (!cap.dataset.label) cap.dataset.label = cap.textContent;
      cap.textContent = cap.dataset.label + " · max " + (field === "weight" || field === "error_rate" ? pct(max) : num(max, 1));
    }
  }

  function renderAlerts(state) {
    const alerts = state.alerts.slice();
    // Stale weights: an endpoint the coordinator has not heard from for three heartbeat intervals.
    for (const s of state.services) for (const e of s.endpoints) {
      if (e.stale && e.heartbeat_age_ms != null) {
        alerts.push({ at_ms: state.generated_at_ms - e.heartbeat_age_ms, kind: "stale_weights", service: s.name,
                      endpoint: e.id, message: "no heartbeat for " + (e.heartbeat_age_ms / 1000).toFixed(1) + " s; its weight is not fresh" });
      }
    }
    alerts.sort((a, b) => b.at_ms - a.at_ms);
    const rows = alerts.slice(0, 100).map((a) => el("tr", { class: "alert", "data-kind": a.kind, "data-endpoint": a.endpoint }, [
      td(time(a.at_ms)), el("td", {}, [el("span", { class: "kind " + a.kind, text: a.kind })]),
      td(a.service), td(a.endpoint || "–"), td(a.message),
    ]));
    replaceRows($("alerts"), rows, "no alerts", 5);
  }

  function renderDecisions(state) {
    const ds = state.decisions.slice().reverse();
    $("decision-count").textContent = ds.length ? "newest first, " + ds.length + " shown" : "";
    const rows = ds.map((d) => {
      const dir = d.new_weight > d.old_weight ? "up" : d.new_weight < d.old_weight ? "down" : "";
      const states = d.old_state === d.new_state ? "" : " (" + d.old_state + " → " + d.new_state + ")";
      return el("tr", { class: "decision", "data-sequence": String(d.sequence), "data-rule": d.rule,
                         "data-endpoint": d.endpoint, "data-service": d.service }, [
        td(time(d.at_ms)), td(d.service + "/" + d.endpoint),
        el("td", { class: "num" }, [pct(d.old_weight), el("span", { class: "arrow", text: " → " }),
                                    el("span", { class: dir, text: pct(d.new_weight) }), states]),
        el("td", {}, [el("span", { class: "rule", text: d.rule })]), td(d.reason),
      ]);
    });
    replaceRows($("decisions"), rows, "no decisions yet", 5);
  }

  function render(state) {
    renderEndpoints(state);
    renderChart($("chart-weight"), state, "weight", 1);
    renderChart($("chart-p99"), state, "p99_ms");
    renderChart($("chart-errors"), state, "error_rate");
    renderChart($("chart-inflight"), state, "in_flight");
    renderAlerts(state);
    renderDecisions(state);
    const st = $("status");
    st.dataset.connected = "true";
    st.textContent = "updated " + time(state.generated_at_ms) + " · heartbeats " + state.ingest.heartbeats +
      " · dropped " + state.ingest.dropped + " · rejected " + state.ingest.rejected;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  async function poll() {
    try {
      const response = await fetch("/api/state", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (err) {
      const st = $("status");
      st.dataset.connected = "false";
      st.textContent = "disconnected (" + err.message + "); retrying";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
