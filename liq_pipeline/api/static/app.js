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

function fmtUsd(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "K";
  return v.toFixed(0);
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

async function draw() {
  const token = ++drawToken;
  const symbol = el("symbol").value;
  const window = el("window").value;
  if (!symbol) return;
  writeUrl(symbol, window);
  div.dataset.state = "loading";
  setStatus("loading " + symbol + " " + window + "…");
  let body;
  try {
    const url = "/liquidations/heatmap-timeseries?" + new URLSearchParams({ symbol, time_window: window });
    const r = await fetch(url);
    body = await r.json();
    if (token !== drawToken) return; // a newer selection is on its way
    if (!r.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      throw new Error(detail);
    }
  } catch (err) {
    if (token !== drawToken) return;
    Plotly.purge(div);
    div.dataset.state = "error";
    div.dataset.symbol = symbol;
    div.dataset.error = String(err.message || err);
    setStatus(String(err.message || err), true);
    return;
  }

  const nT = body.times.length;
  const nP = body.prices.length;
  // Column i is the bucket [times[i], times[i] + step): drawn at the bucket's middle, so its cell spans exactly
  // the bucket on the time axis, with the bucket's candle on it. Its colours are the state at as_of[i] (the end).
  const stepMs = body.step_seconds * 1000;
  const times = body.times.map((t) => new Date(Date.parse(t) + stepMs / 2).toISOString().replace("Z", ""));
  const label = (t) => t.slice(0, 16).replace("T", " ");
  const bucket = body.times.map(label);
  const state = body.as_of.map(label);
  // Plotly's heatmap wants z[price][time]; the API gives [time][price].
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
      crow[t] = [fmtUsd(l), fmtUsd(s), fmtUsd(l + s), bucket[t], state[t]];
      if (l + s > 0) nonzero.push(l + s);
    }
    z[p] = row;
    custom[p] = crow;
  }
  const zmax = Math.max(1, quantile(nonzero, parseFloat(el("contrast").value)));
  const c = body.candles;

  const heat = {
    type: "heatmap",
    name: "liquidation notional",
    x: times,
    y: body.prices,
    z: z,
    customdata: custom,
    zmin: 0,
    zmax: zmax,
    zsmooth: false,
    colorscale: COLORSCALE,
    colorbar: {
      x: -0.015,
      xanchor: "right",
      thickness: 12,
      len: 0.9,
      tickformat: "~s",
      tickfont: { color: "#a9a3c2", size: 10 },
      outlinewidth: 0,
      title: { text: "USD", font: { color: "#a9a3c2", size: 10 } },
    },
    hovertemplate:
      "Bucket from %{customdata[3]} UTC<br>State at %{customdata[4]} UTC (end of bucket)<br>Price %{y:,}<br>" +
      "Long liq. $%{customdata[0]}<br>Short liq. $%{customdata[1]}<br>Total $%{customdata[2]}<extra></extra>",
  };
  const candles = {
    type: "candlestick",
    name: "price",
    x: times,
    open: c.open,
    high: c.high,
    low: c.low,
    close: c.close,
    hovertext: bucket.map((b) => "candle of the bucket from " + b + " UTC"),
    hoverinfo: "y+text",
    increasing: { line: { color: "#0ecb81", width: 1 }, fillcolor: "#0ecb81" },
    decreasing: { line: { color: "#f6465d", width: 1 }, fillcolor: "#f6465d" },
    whiskerwidth: 0.3,
    hoverlabel: { bgcolor: "#1d1a2b" },
  };
  const closes = c.close.filter((v) => v !== null);
  const last = closes.length ? closes[closes.length - 1] : null;
  const layout = {
    paper_bgcolor: BG,
    plot_bgcolor: PLOT_BG,
    font: { color: "#d7d3e6", size: 11 },
    margin: { l: 70, r: 80, t: 36, b: 40 },
    title: {
      text: body.symbol + " liquidation heatmap · " + body.time_window + " · model estimate",
      font: { size: 13, color: "#d7d3e6" },
      x: 0.01,
      y: 0.985,
    },
    showlegend: false,
    hovermode: "closest",
    hoverlabel: { bgcolor: "#1d1a2b", bordercolor: "#5b5577", font: { color: "#f2effa" } },
    xaxis: {
      type: "date",
      rangeslider: { visible: false },
      gridcolor: "rgba(255,255,255,0.06)",
      zeroline: false,
      showspikes: true,
      spikecolor: "#8a84a3",
      spikethickness: 1,
    },
    yaxis: {
      side: "right",
      tickformat: ",",
      gridcolor: "rgba(255,255,255,0.06)",
      zeroline: false,
      showspikes: true,
      spikecolor: "#8a84a3",
      spikethickness: 1,
    },
    shapes: last === null ? [] : [
      { type: "line", xref: "paper", x0: 0, x1: 1, y0: last, y1: last,
        line: { color: "rgba(255,255,255,0.35)", width: 1, dash: "dot" } },
    ],
  };
  await Plotly.react(div, [heat, candles], layout, { responsive: true, displaylogo: false, scrollZoom: false });
  if (token !== drawToken) return;
  showParams(body.params, body.data_source);
  draws += 1;
  div.dataset.symbol = body.symbol;
  div.dataset.window = body.time_window;
  div.dataset.priceMin = String(body.prices[0]);
  div.dataset.priceMax = String(body.prices[nP - 1]);
  div.dataset.times = String(nT);
  div.dataset.draws = String(draws);
  div.dataset.state = "ready";
  setStatus(
    body.symbol + " · step " + body.step_seconds / 60 + " min · " + nT + " × " + nP + " cells · bin " +
      body.price_bin_size + " · state to " + (nT ? state[nT - 1] + " UTC" : "–")
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
