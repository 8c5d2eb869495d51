// The heatmap page: fills the selectors from /symbols, draws /liquidations/heatmap-timeseries with Plotly.
"use strict";

// Dark purple -> blue -> teal -> green -> yellow, like Coinglass's (and Viridis).
const COLORSCALE = [
  [0.0, "#1b0c33"],
  [0.08, "#2f0f5c"],
  [0.22, "#3b3a8c"],
  [0.4, "#2a7b8e"],
  [0.58, "#22a884"],
  [0.76, "#7ad151"],
  [1.0, "#fde725"],
];
const BG = "#0b0a12";
const PLOT_BG = COLORSCALE[0][1];

const el = (id) => document.getElementById(id);
const div = el("heatmap");
let drawToken = 0;
let draws = 0;

function setStatus(text, isError) {
  const s = el("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function quantile(values, q) {
  if (!values.length) return 1;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))];
}

function readUrl() {
  const p = new URLSearchParams(location.search);
  return { symbol: p.get("symbol"), window: p.get("window") };
}

function writeUrl(symbol, window) {
  const p = new URLSearchParams(location.search);
  p.set("symbol", symbol);
  p.set("window", window);
  history.replaceState(null, "", "?" + p.toString());
}

async function loadSymbols() {
  const r = await fetch("/symbols");
  if (!r.ok) throw new Error("/symbols answered " + r.status);
  const body = await r.json();
  const sel = el("symbol");
  sel.innerHTML = "";
  for (const s of body.symbols) {
    const o = document.createElement("option");
    o.value = s.symbol;
    const range = s.heatmap_dates;
    o.textContent = range ? s.symbol : s.symbol + " (no data yet)";
    o.dataset.hasData = range ? "1" : "0";
    sel.appendChild(o);
  }
  const wanted = readUrl();
  const withData = body.symbols.filter((s) => s.heatmap_dates).map((s) => s.symbol);
  const pick = [wanted.symbol, "BTCUSDT", withData[0], body.symbols[0] && body.symbols[0].symbol].find(
    (s) => s && body.symbols.some((x) => x.symbol === s)
  );
  if (pick) sel.value = pick;
  if (wanted.window && [...el("window").options].some((o) => o.value === wanted.window)) {
    el("window").value = wanted.window;
  }
}

function showParams(params, source) {
  const keys = Object.keys(params || {});
  // The embedded sample is a generated market, not exchange data: say so beside the chart.
  el("badge").style.display = source === "sample" ? "inline" : "none";
  el("params").textContent = keys.length
    ? " Model parameters: " + keys.slice(0, 8).map((k) => k + "=" + JSON.stringify(params[k])).join(", ")
    : "";
}

const DAY_MS = 86400000;
const BAND_NAME = "partial lookback";
const PLOT_CONFIG = { responsive: true, displaylogo: false, scrollZoom: false };

function dayOf(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function coverageLine(cov) {
  // Why a long window has few columns: the lake holds fewer days than the window spans.
  if (!cov) return "";
  const span = cov.first_day ? "data: " + cov.first_day + " – " + cov.last_day : "data: none";
  let text = span + " (" + cov.days_with_data + " of " + cov.days_in_window + " days in this window)";
  const n = (cov.partial_lookback || []).length;
  if (n) text += " · " + n + (n === 1 ? " day" : " days") + " with partial lookback";
  return text;
}

function showCoverage(cov) {
  const line = el("coverage");
  line.textContent = coverageLine(cov);
  line.hidden = !cov;
  line.title = cov ? "columns read from " + cov.source : "";
  line.dataset.source = cov ? cov.source : "";
}

function lookbackNotes(cov) {
  // date -> hover note, for the days the model replayed with fewer lookback days than configured.
  const notes = new Map();
  for (const d of (cov && cov.partial_lookback) || []) {
    notes.set(d.date, "model had " + d.lookback_days_used + " of " + d.lookback_days + " lookback days");
  }
  return notes;
}

function lookbackBands(cov, fromMs, toMs) {
  // One translucent band per partial-lookback day, clipped to the drawn range so it never widens the x axis.
  // Drawn above the traces: the heatmap is opaque, so a band below it would be hidden.
  const bands = [];
  for (const d of (cov && cov.partial_lookback) || []) {
    const day = Date.parse(d.date + "T00:00:00Z");
    const x0 = Math.max(day, fromMs);
    const x1 = Math.min(day + DAY_MS, toMs);
    if (x1 <= x0) continue;
    bands.push({
      type: "rect", name: "model had less than its full lookback (hover: n of N days)", legendgroup: BAND_NAME,
      showlegend: bands.length === 0, xref: "x", yref: "paper", y0: 0, y1: 1, layer: "above",
      x0: new Date(x0).toISOString().replace("Z", ""), x1: new Date(x1).toISOString().replace("Z", ""),
      fillcolor: "rgba(255,255,255,0.13)", line: { width: 0 },
    });
  }
  return bands;
}

async function fetchAnswer(symbol, window) {
  // The browser sends Accept-Encoding: gzip itself, so a compressing server sends the answer compressed.
  const url = "/liquidations/heatmap-timeseries?" + new URLSearchParams({ symbol, time_window: window });
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

function heatTrace(body) {
  // One heatmap trace for the whole window (no per-cell DOM): z[price][time], as Plotly wants it; the API gives
  // [time][price]. Hover strings are shared per column, numbers are formatted by Plotly only when hovered.
  const nT = body.times.length;
  const nP = body.prices.length;
  const label = (t) => t.slice(0, 16).replace("T", " ");
  const notes = lookbackNotes(body.coverage);
  const bucket = body.times.map(label);
  const state = body.as_of.map((t) => {
    const note = notes.get(dayOf(Date.parse(t) - 1)); // the partition day of a state ending at t
    return label(t) + " UTC (end of bucket)" + (note ? "<br>" + note : "");
  });
  const z = new Array(nP);
  const custom = new Array(nP);
  const nonzero = [];
  for (let p = 0; p < nP; p++) {
    const row = new Array(nT);
    const crow = new Array(nT);
    for (let t = 0; t < nT; t++) {
      const l = body.long[t][p];
      const s = body.short[t][p];
      row[t] = l + s;
      crow[t] = [l, s, bucket[t], state[t]];
      if (l + s > 0) nonzero.push(l + s);
    }
    z[p] = row;
    custom[p] = crow;
  }
  return {
    type: "heatmap", name: "liquidation notional", showlegend: false,
    x: columnX(body), y: body.prices, z: z, customdata: custom,
    zmin: 0, zmax: Math.max(1, quantile(nonzero, parseFloat(el("contrast").value))),
    zsmooth: false, colorscale: COLORSCALE,
    colorbar: {
      x: -0.015, xanchor: "right", thickness: 12, len: 0.9, tickformat: "~s", outlinewidth: 0,
      tickfont: { color: "#a9a3c2", size: 10 }, title: { text: "USD", font: { color: "#a9a3c2", size: 10 } },
    },
    hovertemplate:
      "Bucket from %{customdata[2]} UTC<br>State at %{customdata[3]}<br>Price %{y:,}<br>" +
      "Long liq. $%{customdata[0]:.3~s}<br>Short liq. $%{customdata[1]:.3~s}<br>Total $%{z:.3~s}<extra></extra>",
  };
}

function columnX(body) {
  // Column i is the bucket [times[i], times[i] + step): drawn at the bucket's middle, so its cell spans exactly
  // the bucket on the time axis, with the bucket's candle on it. Its colours are the state at as_of[i] (the end).
  const half = (body.step_seconds * 1000) / 2;
  return body.times.map((t) => new Date(Date.parse(t) + half).toISOString().replace("Z", ""));
}

function candleTrace(body) {
  const c = body.candles;
  return {
    type: "candlestick", name: "price", showlegend: false, x: columnX(body),
    open: c.open, high: c.high, low: c.low, close: c.close,
    hovertext: body.times.map((t) => "candle of the bucket from " + t.slice(0, 16).replace("T", " ") + " UTC"),
    hoverinfo: "y+text",
    increasing: { line: { color: "#0ecb81", width: 1 }, fillcolor: "#0ecb81" },
    decreasing: { line: { color: "#f6465d", width: 1 }, fillcolor: "#f6465d" },
    whiskerwidth: 0.3,
    hoverlabel: { bgcolor: "#1d1a2b" },
  };
}

function plotLayout(body) {
  const closes = body.candles.close.filter((v) => v !== null);
  const last = closes.length ? closes[closes.length - 1] : null;
  const n = body.times.length;
  const from = n ? Date.parse(body.times[0]) : 0;
  const bands = lookbackBands(body.coverage, from, n ? Date.parse(body.times[n - 1]) + body.step_seconds * 1000 : 0);
  const lastLine = { type: "line", xref: "paper", x0: 0, x1: 1, y0: last, y1: last,
    line: { color: "rgba(255,255,255,0.35)", width: 1, dash: "dot" } };
  const spikes = { showspikes: true, spikecolor: "#8a84a3", spikethickness: 1 };
  const grid = { gridcolor: "rgba(255,255,255,0.06)", zeroline: false };
  return {
    paper_bgcolor: BG, plot_bgcolor: PLOT_BG, font: { color: "#d7d3e6", size: 11 },
    margin: { l: 70, r: 80, t: 36, b: 40 },
    title: { text: body.symbol + " liquidation heatmap · " + body.time_window + " · model estimate",
      font: { size: 13, color: "#d7d3e6" }, x: 0.01, y: 0.985 },
    showlegend: bands.length > 0,
    legend: { orientation: "h", x: 1, xanchor: "right", y: 1.0, yanchor: "bottom", bgcolor: "rgba(0,0,0,0)",
      font: { size: 10, color: "#a9a3c2" } },
    hovermode: "closest",
    hoverlabel: { bgcolor: "#1d1a2b", bordercolor: "#5b5577", font: { color: "#f2effa" } },
    xaxis: { type: "date", rangeslider: { visible: false }, ...grid, ...spikes },
    yaxis: { side: "right", tickformat: ",", ...grid, ...spikes },
    shapes: (last === null ? [] : [lastLine]).concat(bands),
  };
}

function showError(symbol, err) {
  Plotly.purge(div);
  div.dataset.state = "error";
  div.dataset.symbol = symbol;
  div.dataset.error = String(err.message || err);
  setStatus(String(err.message || err), true);
}

async function draw() {
  const token = ++drawToken;
  const symbol = el("symbol").value;
  const window = el("window").value;
  if (!symbol) return;
  writeUrl(symbol, window);
  div.dataset.state = "loading";
  setStatus("loading " + symbol + " " + window + "…");
  const started = performance.now();
  let body;
  try {
    body = await fetchAnswer(symbol, window);
  } catch (err) {
    if (token === drawToken) showError(symbol, err);
    return;
  }
  if (token !== drawToken) return; // a newer selection is on its way
  const fetched = performance.now();
  // Plotly.react updates the one plot in place (no new plot per window or symbol switch).
  await Plotly.react(div, [heatTrace(body), candleTrace(body)], plotLayout(body), PLOT_CONFIG);
  if (token !== drawToken) return;
  const drawn = performance.now();
  showParams(body.params, body.data_source);
  showCoverage(body.coverage);
  draws += 1;
  const nT = body.times.length;
  const nP = body.prices.length;
  Object.assign(div.dataset, {
    symbol: body.symbol, window: body.time_window, priceMin: String(body.prices[0]),
    priceMax: String(body.prices[nP - 1]), times: String(nT), draws: String(draws),
    fetchMs: (fetched - started).toFixed(1), plotMs: (drawn - fetched).toFixed(1),
    drawMs: (drawn - started).toFixed(1), state: "ready",
  });
  const last = nT ? body.as_of[nT - 1].slice(0, 16).replace("T", " ") + " UTC" : "–";
  setStatus(
    body.symbol + " · step " + body.step_seconds / 60 + " min · " + nT + " × " + nP + " cells · bin " +
      body.price_bin_size + " · state to " + last + " · drawn in " + Math.round(drawn - started) + " ms"
  );
}

async function main() {
  try {
    await loadSymbols();
  } catch (err) {
    div.dataset.state = "error";
    setStatus("could not load symbols: " + (err.message || err), true);
    return;
  }
  for (const id of ["symbol", "window", "contrast"]) el(id).addEventListener("change", draw);
  await draw();
  setInterval(() => { if (!document.hidden) draw(); }, 60000);
}

main();
