// Madoguchi voice-of-the-customer report: KPIs from /v1/voc/report, charts from /v1/voc/report.png.
// The staff key stays in this tab (sessionStorage); every server text is rendered with textContent.
(() => {
  "use strict";

  const STORE = "madoguchi.voc.key";
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
  const form = $("signin"), keyInput = $("key"), errorBox = $("error"), section = $("report");
  let chartUrl = null;

  const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
  const num = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  function showError(text) { errorBox.textContent = text || ""; errorBox.hidden = !text; }

  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }

  function fillTable(id, rows) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren();
    for (const [name, k] of rows) {
      const tr = document.createElement("tr");
      tr.dataset.testid = `${id}-row`;
      for (const text of [name, String(k.conversations), pct(k.automation_rate), pct(k.escalation_rate),
        num(k.csat_mean), num(k.ces_mean), num(k.nps, 0)]) cell(tr, text);
      body.appendChild(tr);
    }
  }

  function fillList(id, items) {
    const list = $(id);
    list.replaceChildren();
    for (const text of items) {
      const li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    }
  }

  function renderKpis(t) {
    const cards = [
      ["conversations", String(t.conversations)], ["automation rate", pct(t.automation_rate)],
      ["escalation rate", pct(t.escalation_rate)], ["CSAT (1-6)", num(t.csat_mean)],
      ["satisfied (CSAT ≥ 4)", pct(t.csat_satisfied)], ["感動した (CSAT 6)", pct(t.csat_delighted)],
      ["CES (0-10)", num(t.ces_mean)], ["NPS", num(t.nps, 0)], ["surveys", String(t.surveys)],
    ];
    const box = $("kpis");
    box.replaceChildren();
    for (const [label, value] of cards) {
      const card = document.createElement("div");
      card.className = "kpi";
      card.dataset.testid = "kpi";
      const l = document.createElement("div"); l.className = "kpi__label"; l.textContent = label;
      const v = document.createElement("div"); v.className = "kpi__value"; v.textContent = value;
      card.append(l, v);
      box.appendChild(card);
    }
  }

  async function get(path, key) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${key}` } });
    if (!response.ok) {
      let detail = `HTTP ${response.status}`;
      try { const data = await response.json(); detail = typeof data.detail === "string" ? data.detail : data.code; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return response;
  }

  async function load(key) {
    const params = new URLSearchParams();
    if ($("end").value) params.set("end", $("end").value);
    if ($("days").value) params.set("days", $("days").value);
    const query = params.toString() ? `?${params}` : "";
    const report = await (await get(`/v1/voc/report${query}`, key)).json();
    const png = await (await get(`/v1/voc/report.png${query}`, key)).blob();
    const alerts = await (await get("/v1/voc/alerts?limit=10", key)).json();
    renderKpis(report.totals);
    fillTable("by-day", Object.entries(report.by_day));
    fillTable("by-path", Object.entries(report.by_path));
    fillList("reasons", Object.entries(report.totals.escalation_by_reason).map(([r, v]) => `${r}: ${pct(v)}`));
    fillList("topics", report.top_topics.map((t) => `${t.word} (${t.messages})`));
    fillList("alerts", alerts.map((a) => `${a.created_at.slice(0, 16)} ${a.label}: ${a.count} messages (${num(a.ratio, 1)}× expected)`));
    if (chartUrl) URL.revokeObjectURL(chartUrl);
    chartUrl = URL.createObjectURL(png);
    $("chart").src = chartUrl;
    $("export").href = chartUrl;
    section.hidden = false;
    document.body.dataset.loaded = "true";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    sessionStorage.setItem(STORE, key);
    showError("");
    document.body.dataset.loaded = "false";
    load(key).catch((err) => { section.hidden = true; showError(err.message); document.body.dataset.loaded = "error"; });
  });

  const saved = sessionStorage.getItem(STORE);
  if (saved) { keyInput.value = saved; form.requestSubmit(); }
  document.body.dataset.ready = "true";
})();
