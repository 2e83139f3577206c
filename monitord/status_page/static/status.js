// The status page: polls v1/status every few seconds and draws what it says.
// No framework, no build step, nothing fetched from elsewhere: charts are inline SVG.
"use strict";
(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = "monitord.token";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 300, H = 80;
  const page = { since: 0, thumbnailsAfter: 0, samples: [], span: 3600, sampleSeconds: 10, images: new Map(), timer: 0,
                 painted: false };
  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  const number = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "—" : Number(x).toPrecision(4));
  const percent = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "—" : (100 * x).toFixed(1) + " %");

  // -- fetching ---------------------------------------------------------------------------

  function schedule() {
    clearTimeout(page.timer);
    page.timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let response;
    try {
      response = await fetch(`v1/status?since=${page.since}&thumbnails_after=${page.thumbnailsAfter}`,
                             { headers, cache: "no-store" });
    } catch (error) {
      showError("cannot reach the daemon (" + error.message + "); retrying");
      schedule();
      return;
    }
    if (response.status === 401) {
      showLogin(token ? "The daemon refused that token." : "");
      return;  // no polling until a token is given
    }
    if (!response.ok) {
      let reason = response.statusText;
      try { reason = (await response.json()).error || reason; } catch (_) { /* not JSON */ }
      showError(`the daemon answered ${response.status}: ${reason}; retrying`);
      schedule();
      return;
    }
    const body = await response.json();
    $("error").hidden = true;
    render(body);
    schedule();
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function showLogin(message) {
    $("content").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("token").focus();
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("login").hidden = true;
    poll();
  });

  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(page.timer);
    showLogin("");
  });

  // -- drawing ----------------------------------------------------------------------------

  function render(body) {
    $("login").hidden = true;
    $("content").hidden = false;
    $("sign-out").hidden = !sessionStorage.getItem(TOKEN_KEY);
    page.span = body.history.span_seconds;
    page.sampleSeconds = body.history.sample_seconds;
    for (const sample of body.history.samples) page.samples.push(sample);
    if (page.samples.length) page.since = page.samples[page.samples.length - 1].time;
    const oldest = body.time - page.span;
    while (page.samples.length && page.samples[0].time < oldest) page.samples.shift();
    const notes = body.notes || {};
    const model = body.model;
    $("model").textContent = model ? `${model.name} on ${model.device} · role ${body.role}` : `role ${body.role}`;
    $("readiness").textContent = body.ready ? "ready" : body.reason;
    $("readiness").className = "badge " + (body.ready ? "ready" : "not-ready");
    $("updated").textContent = "updated " + new Date(body.time * 1000).toLocaleTimeString();
    note("detectors", notes.detectors);
    drawDetectors(body.detectors || [], body.time);
    note("alerts", notes.alerts);
    drawAlerts(body.alerts);
    note("traffic", notes.traffic, !body.traffic);
    drawTraffic(body.traffic, body.time);
    note("accuracy", notes.accuracy);
    drawAccuracy(body, body.time);
    drawModel(model, body.reference);
    note("thumbnails", notes.thumbnails, !body.thumbnails);
    drawThumbnails(body.thumbnails || {});
    if (!page.painted) {
      page.painted = true;
      performance.mark("monitord-first-data");
      document.body.dataset.painted = "true";
    }
  }

  // A panel this process cannot fill says why instead (``hide``: hide its content too).
  function note(panel, text, hide) {
    const node = $(panel + "-note");
    node.textContent = text || "";
    node.hidden = !text;
    for (const child of $(panel + "-panel").children) {
      if (child.tagName !== "H2" && child !== node) child.hidden = Boolean(hide);
    }
  }

  // The time axis runs from the oldest sample kept (at most the span, an hour) to now.
  function chart(target, lines, options) {
    const now = options.now;
    const shortest = 10 * page.sampleSeconds;
    const start = Math.max(now - page.span, Math.min(page.samples.length ? page.samples[0].time : now, now - shortest));
    const width = now - start;
    const values = [];
    for (const line of lines) for (const [, v] of line.points) if (v !== null) values.push(v);
    for (const y of options.marks || []) if (y !== null && Number.isFinite(y)) values.push(y);
    let low = options.low ?? Math.min(0, ...values), high = options.high ?? Math.max(...values, low + 1e-9);
    if (options.high === undefined) high += (high - low) * 0.1;
    const x = (t) => ((t - start) / width) * W;
    const y = (v) => H - ((v - low) / (high - low)) * H;
    const nodes = [];
    for (const band of options.bands || []) {
      const left = x(band[0]), width = Math.max(1, x(band[1]) - left);
      nodes.push(svg("rect", { x: left.toFixed(1), y: H - 4, width: width.toFixed(1), height: 4, class: "band-" + band[2] }));
    }
    for (const mark of options.markLines || []) {
      if (mark.y !== null && Number.isFinite(mark.y)) {
        nodes.push(svg("line", { x1: 0, x2: W, y1: y(mark.y).toFixed(2), y2: y(mark.y).toFixed(2), class: mark.cls }));
      }
    }
    for (const line of lines) {
      // A gap (null) breaks the line: a detector that was not ready has no statistic.
      let path = "", pen = "M";
      for (const [t, v] of line.points) {
        if (v === null || t < start) { pen = "M"; continue; }
        path += `${pen}${x(t).toFixed(1)},${y(v).toFixed(2)}`;
        pen = "L";
      }
      if (path) nodes.push(svg("path", { d: path, class: line.cls }));
    }
    target.replaceChildren(...nodes);
  }

  function levelBands(name) {
    const bands = [];
    for (let i = 0; i < page.samples.length; i++) {
      const reading = (page.samples[i].detectors || {})[name];
      if (reading && reading[2] > 0) {
        const end = i + 1 < page.samples.length ? page.samples[i + 1].time : page.samples[i].time + 1;
        bands.push([page.samples[i].time, end, reading[2]]);
      }
    }
    return bands;
  }

  function detectorCard(name) {
    let card = document.querySelector(`.card[data-detector="${CSS.escape(name)}"]`);
    if (card) return card;
    card = el("div", "card");
    card.dataset.detector = name;
    const title = el("h3");
    title.append(el("span", "name", name), el("span", "level"));
    const numbers = el("p", "numbers");
    numbers.append("statistic ", el("b", "statistic"), " / threshold ", el("b", "threshold"), el("span", "extra"));
    const chartNode = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
    card.append(title, el("p", "sub"), numbers, chartNode);
    $("detectors").append(card);
    return card;
  }

  function drawDetectors(detectors, now) {
    const names = new Set(detectors.map((d) => d.name));
    for (const card of [...$("detectors").children]) if (!names.has(card.dataset.detector)) card.remove();
    for (const d of detectors) {
      const card = detectorCard(d.name);
      const level = card.querySelector(".level");
      level.textContent = d.level;
      level.className = "level level-" + d.level;
      card.querySelector(".sub").textContent = `${d.type} on ${d.signal}`;
      card.querySelector(".statistic").textContent = number(d.statistic);
      card.querySelector(".threshold").textContent = number(d.threshold);
      const extra = [];
      if (d.p_value !== null && d.p_value !== undefined) extra.push("p " + number(d.p_value));
      extra.push(`${d.samples} samples`);
      if (!d.ready) extra.push(`needs ${d.samples_needed} more`);
      card.querySelector(".extra").textContent = " · " + extra.join(" · ");
      const points = page.samples.filter((s) => s.detectors && s.detectors[d.name])
        .map((s) => [s.time, s.detectors[d.name][0]]);
      points.push([now, d.statistic]);
      chart(card.querySelector("svg"), [{ points, cls: "statistic" }], {
        now, marks: [d.threshold], bands: levelBands(d.name),
        markLines: [{ y: d.threshold, cls: "threshold" }, { y: d.warning_threshold, cls: "warning-threshold" }],
      });
    }
  }

  function drawAlerts(alerts) {
    const list = $("alerts");
    if (!alerts) { list.replaceChildren(); return; }
    if (!alerts.length) { list.replaceChildren(el("li", "muted", "none open")); return; }
    list.replaceChildren(...alerts.map((alert) => {
      const item = el("li", "level-" + (alert.labels.severity === "critical" ? "drift" : "warning"));
      item.textContent = `${alert.labels.detector || alert.labels.alertname} (${alert.labels.severity}) since ` +
        `${new Date(alert.startsAt).toLocaleTimeString()}: statistic ${alert.annotations.statistic} against ` +
        `threshold ${alert.annotations.threshold}`;
      item.title = alert.annotations.summary || "";
      return item;
    }));
  }

  function drawTraffic(traffic, now) {
    if (!traffic) return;
    $("images-total").textContent = String(traffic.images);
    $("images-refused").textContent = String(traffic.refused);
    $("images-rate").textContent = number(traffic.images_per_second);
    const latency = traffic.latency_seconds;
    $("latency").textContent = latency === null ? "—" : number(1000 * latency) + " ms";
    const points = page.samples.filter((s) => "images_per_second" in s).map((s) => [s.time, s.images_per_second]);
    chart($("traffic-chart"), [{ points, cls: "series" }], { now });
  }

  function drawAccuracy(body, now) {
    const labelled = body.accuracy, estimated = body.estimated_accuracy;
    $("accuracy").textContent = labelled ? percent(labelled.value) : "—";
    $("accuracy-labels").textContent = labelled ? String(labelled.labels) : "—";
    $("estimated-accuracy").textContent = estimated ? percent(estimated.value) +
      (estimated.value !== null && !estimated.reliable ? " (unreliable)" : "") : "—";
    $("estimated-note").textContent = (estimated && estimated.note) || "";
    const series = (key) => page.samples.filter((s) => key in s).map((s) => [s.time, s[key]]);
    chart($("accuracy-chart"), [{ points: series("accuracy"), cls: "series" },
                                { points: series("estimated_accuracy"), cls: "series second" }],
          { now, low: 0, high: 1 });
  }

  function drawModel(model, reference) {
    const facts = [];
    if (model) facts.push(["model", model.name], ["device", model.device], ["monitord", model.version]);
    for (const [key, value] of Object.entries(reference || {})) {
      facts.push(["reference " + key, typeof value === "object" ? JSON.stringify(value) : String(value)]);
    }
    if (!facts.length) facts.push(["model", "not loaded yet"]);
    $("model-facts").replaceChildren(...facts.flatMap(([key, value]) => [el("dt", "", key), el("dd", "", value)]));
  }

  function drawThumbnails(classes) {
    const seen = new Set();
    const rows = [];
    for (const [name, thumbnails] of Object.entries(classes)) {
      const row = el("div", "class-row");
      row.dataset.class = name;
      row.append(el("span", "name", name));
      for (const t of thumbnails) {
        if (t.src) page.images.set(t.id, t.src);
        page.thumbnailsAfter = Math.max(page.thumbnailsAfter, t.id);
        seen.add(t.id);
        const figure = el("figure");
        const img = el("img");
        img.src = page.images.get(t.id) || "";
        img.alt = `predicted ${name}, confidence ${t.confidence.toFixed(3)}`;
        img.title = `${t.time}`;
        figure.append(img, el("figcaption", "confidence", t.confidence.toFixed(2)));
        row.append(figure);
      }
      rows.push(row);
    }
    for (const id of [...page.images.keys()]) if (!seen.has(id)) page.images.delete(id);
    $("thumbnails").replaceChildren(...(rows.length ? rows : [el("p", "muted", "no images yet")]));
  }

  poll();
})();
