// engram report page: the attention viewer, the lag-CRP view and the tables. No network, no
// framework; the data is the inline JSON block #engram-data (src/report/page/data.rs).
(function () {
  "use strict";
  var el = document.getElementById("engram-data");
  var D = el ? JSON.parse(el.textContent) : {};
  var state = { seq: 0, layer: 0, head: 0, dst: null };
  window.engramViewer = state;
  var listeners = [];

  function h(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "NaN";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4);
  }
  // Viridis, by anchors (the charts' colour map for attention and scores).
  var VIR = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function viridis(t) {
    t = Math.max(0, Math.min(1, t)) * (VIR.length - 1);
    var i = Math.min(VIR.length - 2, Math.floor(t)), f = t - i, a = VIR[i], b = VIR[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
  }
  function rgb(c) { return "rgb(" + c.join(",") + ")"; }
  function colorBar() {
    var s = h("span", { class: "cbar" });
    s.appendChild(h("span", {}, "attention 0"));
    var bar = h("span", { class: "bar" });
    bar.style.background = "linear-gradient(to right," + [0, .25, .5, .75, 1].map(function (t) { return rgb(viridis(t)); }).join(",") + ")";
    s.appendChild(bar);
    s.appendChild(h("span", {}, "1 (same scale for every head and model)"));
    return s;
  }
  function select(layer, head) {
    state.layer = layer; state.head = head;
    listeners.forEach(function (f) { f(); });
  }
  window.engramSelect = select;

  // ---- Attention viewer ----
  var P = D.patterns;
  var bytes = null;
  if (P) {
    var bin = atob(P.data);
    bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  }
  function seqInfo() { return P.seqs[state.seq]; }
  function layerIndex(l) { return P.layers.indexOf(l); }
  // Attention of destination i to source j (positions within the embedded sequence).
  function att(li, head, i, j) {
    var s = seqInfo(), n = s.tokens.length;
    return bytes[s.offset + ((li * P.heads + head) * n + i) * n + j] / P.scale;
  }
  function drawPattern(canvas, li, head) {
    var n = seqInfo().tokens.length;
    canvas.width = n; canvas.height = n;
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(n, n);
    for (var i = 0; i < n; i++) for (var j = 0; j < n; j++) {
      var c = j > i ? [245, 245, 245] : viridis(att(li, head, i, j)), o = 4 * (i * n + j);
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  function tokText(s) { return s.replace(/\n/g, "↵").replace(/\t/g, "→") || "∅"; }

  function buildViewer() {
    var root = document.getElementById("pv");
    if (!root || !P) return;
    state.layer = P.layers[0];
    var ctl = h("div", { class: "pv-controls" });
    var seqSel = h("select", { id: "pv-seq" }), laySel = h("select", { id: "pv-layer" }), headSel = h("select", { id: "pv-head" });
    P.seqs.forEach(function (s, k) { seqSel.appendChild(h("option", { value: k }, "sequence " + s.index)); });
    P.layers.forEach(function (l) { laySel.appendChild(h("option", { value: l }, "layer " + l)); });
    for (var k = 0; k < P.heads; k++) headSel.appendChild(h("option", { value: k }, "head " + k));
    [seqSel, laySel, headSel].forEach(function (s) { ctl.appendChild(s); });
    ctl.appendChild(colorBar());
    root.appendChild(ctl);
    var top = h("div", { class: "pv-controls", id: "pv-top" });
    [["induction", "top induction heads:"], ["cmr", "most CMR-like (lowest CMR distance):"]].forEach(function (kv) {
      var list = D.top && D.top[kv[0]];
      if (!list || !list.length) return;
      top.appendChild(h("span", {}, kv[1]));
      list.forEach(function (x) {
        if (layerIndex(x[0]) < 0) return;
        var b = h("button", { "data-layer": x[0], "data-head": x[1], class: "pv-top" }, "L" + x[0] + "H" + x[1] + " (" + fmt(x[2]) + ")");
        b.onclick = function () { select(x[0], x[1]); };
        top.appendChild(b);
      });
    });
    if (top.childNodes.length) root.appendChild(top);
    root.appendChild(h("p", { class: "note" }, "Hover a token: earlier tokens are coloured by the attention the selected head pays them from it (title: the weight). Hover the pattern for single weights; click a small pattern to select its head."));
    var toks = h("div", { class: "pv-tokens", id: "pv-tokens" });
    root.appendChild(toks);
    var main = h("div", { class: "pv-main" });
    var fig = h("div", {});
    fig.appendChild(h("div", { class: "note", id: "pv-title" }));
    var canvas = h("canvas", { id: "pv-canvas", title: "rows: destination (query) position, columns: source (key) position" });
    fig.appendChild(canvas);
    fig.appendChild(h("div", { class: "note" }, "rows: destination position ↓, columns: source position →"));
    main.appendChild(fig);
    var readout = h("div", { id: "pv-readout" });
    main.appendChild(readout);
    root.appendChild(main);
    root.appendChild(h("h3", {}, "Every head (rows: layers, columns: heads)"));
    var grid = h("table", { class: "pv-grid", id: "pv-grid" });
    root.appendChild(grid);

    function buildTokens() {
      toks.innerHTML = "";
      seqInfo().tokens.forEach(function (t, i) {
        var s = h("span", { class: "tok", "data-pos": i, title: "position " + seqInfo().positions[i] }, tokText(t));
        s.onmouseenter = function () { state.dst = i; paintTokens(); };
        toks.appendChild(s);
      });
    }
    function paintTokens() {
      var li = layerIndex(state.layer), spans = toks.children, i = state.dst;
      var s = seqInfo();
      for (var j = 0; j < spans.length; j++) {
        var sp = spans[j];
        sp.classList.remove("dst", "later");
        if (i === null) { sp.style.background = ""; sp.style.color = ""; sp.removeAttribute("data-attn"); continue; }
        if (j > i) { sp.classList.add("later"); sp.style.background = ""; sp.style.color = ""; sp.removeAttribute("data-attn"); continue; }
        var a = att(li, state.head, i, j);
        sp.setAttribute("data-attn", a.toFixed(4));
        sp.title = "position " + s.positions[j] + ": attention " + a.toFixed(3);
        sp.style.background = rgb(viridis(a));
        sp.style.color = a > 0.6 ? "#000" : "#fff";
        if (j === i) sp.classList.add("dst");
      }
      if (i !== null) {
        var row = [];
        for (var k = 0; k <= i; k++) row.push([att(li, state.head, i, k), k]);
        row.sort(function (x, y) { return y[0] - x[0]; });
        readout.textContent = "L" + state.layer + " H" + state.head + ", sequence " + s.index + "\ndestination " + i + " " + JSON.stringify(s.tokens[i]) + "\ntop sources:\n" +
          row.slice(0, 8).map(function (x) { return "  " + x[1] + " " + JSON.stringify(s.tokens[x[1]]) + "  " + x[0].toFixed(3); }).join("\n");
      } else {
        readout.textContent = "L" + state.layer + " H" + state.head + ", sequence " + s.index + "\n(hover a token)";
      }
    }
    function buildGrid() {
      grid.innerHTML = "";
      var hr = h("tr"); hr.appendChild(h("th", {}, ""));
      for (var k = 0; k < P.heads; k++) hr.appendChild(h("th", {}, "H" + k));
      grid.appendChild(hr);
      P.layers.forEach(function (l, li) {
        var tr = h("tr"); tr.appendChild(h("th", {}, "L" + l));
        for (var k = 0; k < P.heads; k++) {
          var td = h("td"), c = h("canvas", { "data-layer": l, "data-head": k, title: "L" + l + "H" + k });
          drawPattern(c, li, k);
          (function (l, k) { c.onclick = function () { select(l, k); }; })(l, k);
          td.appendChild(c); tr.appendChild(td);
        }
        grid.appendChild(tr);
      });
    }
    function update() {
      laySel.value = state.layer; headSel.value = state.head;
      var li = layerIndex(state.layer);
      if (li < 0) return;
      drawPattern(canvas, li, state.head);
      document.getElementById("pv-title").textContent = "Attention pattern of L" + state.layer + "H" + state.head + " (sequence " + seqInfo().index + ")";
      var cells = grid.querySelectorAll("canvas");
      for (var c = 0; c < cells.length; c++) {
        var on = +cells[c].dataset.layer === state.layer && +cells[c].dataset.head === state.head;
        cells[c].classList.toggle("sel", on);
      }
      var bs = document.querySelectorAll("#pv-top button");
      for (var b = 0; b < bs.length; b++) bs[b].classList.toggle("sel", +bs[b].dataset.layer === state.layer && +bs[b].dataset.head === state.head);
      paintTokens();
    }
    canvas.onmousemove = function (ev) {
      var n = seqInfo().tokens.length, r = canvas.getBoundingClientRect();
      var j = Math.floor((ev.clientX - r.left) / r.width * n), i = Math.floor((ev.clientY - r.top) / r.height * n);
      if (i < 0 || j < 0 || i >= n || j >= n) return;
      var s = seqInfo();
      canvas.title = j > i ? "(future position)" : "destination " + i + " " + JSON.stringify(s.tokens[i]) + " → source " + j + " " + JSON.stringify(s.tokens[j]) + ": " + att(layerIndex(state.layer), state.head, i, j).toFixed(3);
    };
    canvas.onclick = function (ev) {
      var n = seqInfo().tokens.length, r = canvas.getBoundingClientRect();
      state.dst = Math.min(n - 1, Math.max(0, Math.floor((ev.clientY - r.top) / r.height * n)));
      paintTokens();
    };
    seqSel.onchange = function () { state.seq = +seqSel.value; state.dst = null; buildTokens(); buildGrid(); update(); };
    laySel.onchange = function () { select(+laySel.value, state.head); };
    headSel.onchange = function () { select(state.layer, +headSel.value); };
    buildTokens(); buildGrid();
    listeners.push(update);
  }

  // ---- Lag-CRP view ----
  function buildLag() {
    var root = document.getElementById("lag");
    var L = D.lag;
    if (!root || !L) return;
    var byHead = {};
    L.heads.forEach(function (r) { byHead[r[0] + "," + r[1]] = r; });
    var layers = [], heads = [];
    L.heads.forEach(function (r) { if (layers.indexOf(r[0]) < 0) layers.push(r[0]); if (heads.indexOf(r[1]) < 0) heads.push(r[1]); });
    var ctl = h("div", { class: "pv-controls" });
    var ls = h("select", { id: "lag-layer" }), hs = h("select", { id: "lag-head" });
    layers.forEach(function (l) { ls.appendChild(h("option", { value: l }, "layer " + l)); });
    heads.forEach(function (k) { hs.appendChild(h("option", { value: k }, "head " + k)); });
    ctl.appendChild(ls); ctl.appendChild(hs);
    ls.onchange = function () { select(+ls.value, state.head); };
    hs.onchange = function () { select(state.layer, +hs.value); };
    root.appendChild(ctl);
    var box = h("div", { id: "lag-chart" });
    root.appendChild(box);
    root.appendChild(h("p", { class: "note" }, "Lags −5..+5 relative to the earlier occurrence of the destination's token; the head's mean pre-softmax score minus its minimum over those lags (" + L.source + ", column score), and the CMR curve fitted to it (column cmr_fit, dashed; absent without a fit). Same axes for every head: compare heads and models directly."));
    var NS = "http://www.w3.org/2000/svg";
    function s(tag, attrs, text) {
      var e = document.createElementNS(NS, tag);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = text;
      return e;
    }
    function update() {
      ls.value = state.layer; hs.value = state.head;
      var r = byHead[state.layer + "," + state.head];
      box.innerHTML = "";
      if (!r) { box.textContent = "no lag-CRP for L" + state.layer + "H" + state.head; return; }
      var idx = [];
      L.lags.forEach(function (lag, k) { if (lag >= -5 && lag <= 5) idx.push(k); });
      var sc = idx.map(function (k) { return r[2][k]; });
      var fin = sc.filter(function (v) { return v !== null; });
      var mn = fin.length ? Math.min.apply(null, fin) : 0;
      var ys = sc.map(function (v) { return v === null ? null : v - mn; });
      var fit = r[3] ? idx.map(function (k) { return r[3][k]; }) : null;
      var all = ys.concat(fit || []).filter(function (v) { return v !== null; });
      var ymax = all.length ? Math.max.apply(null, all) : 1;
      if (!(ymax > 0)) ymax = 1;
      var W = 560, H = 320, x0 = 70, x1 = W - 20, y0 = 40, y1 = H - 50;
      var svg = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, id: "lag-svg" });
      var X = function (lag) { return x0 + (lag + 5) / 10 * (x1 - x0); };
      var Y = function (v) { return y1 - v / (ymax * 1.08) * (y1 - y0); };
      svg.appendChild(s("text", { x: W / 2, y: 20, "text-anchor": "middle", "font-size": 14, "font-weight": "bold" }, "Lag-CRP of L" + state.layer + "H" + state.head + " and its CMR fit"));
      svg.appendChild(s("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: "#999" }));
      for (var lag = -5; lag <= 5; lag++) {
        svg.appendChild(s("line", { x1: X(lag), x2: X(lag), y1: y1, y2: y1 + 5, stroke: "#333" }));
        svg.appendChild(s("text", { x: X(lag), y: y1 + 18, "text-anchor": "middle", "font-size": 12 }, lag > 0 ? "+" + lag : String(lag)));
      }
      for (var t = 0; t <= 4; t++) {
        var v = ymax * t / 4;
        svg.appendChild(s("line", { x1: x0 - 5, x2: x0, y1: Y(v), y2: Y(v), stroke: "#333" }));
        svg.appendChild(s("text", { x: x0 - 8, y: Y(v) + 4, "text-anchor": "end", "font-size": 12 }, v.toPrecision(3)));
      }
      svg.appendChild(s("text", { x: (x0 + x1) / 2, y: H - 12, "text-anchor": "middle", "font-size": 13 }, "lag (key position − earlier occurrence, tokens)"));
      svg.appendChild(s("text", { x: 16, y: (y0 + y1) / 2, "text-anchor": "middle", "font-size": 13, transform: "rotate(-90 16 " + (y0 + y1) / 2 + ")" }, "score − min (logits)"));
      function line(vals, color, dash, cls) {
        var d = "", pen = false;
        vals.forEach(function (v, k) {
          if (v === null) { pen = false; return; }
          d += (pen ? "L" : "M") + X(k - 5).toFixed(1) + " " + Y(v).toFixed(1) + " "; pen = true;
          svg.appendChild(s("circle", { cx: X(k - 5), cy: Y(v), r: 3, fill: color, class: cls, "data-lag": k - 5, "data-value": v }));
        });
        if (d) svg.appendChild(s("path", { d: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash }));
      }
      line(ys, "#1f77b4", "", "lag-score");
      var legend = [["#1f77b4", "", "attention score − min"]];
      if (fit && fit.some(function (v) { return v !== null; })) { line(fit, "#ff7f0e", "6 4", "lag-fit"); legend.push(["#ff7f0e", "6 4", "CMR fit"]); }
      legend.forEach(function (g, k) {
        var ly = y0 + 14 + 18 * k;
        svg.appendChild(s("line", { x1: x1 - 170, x2: x1 - 145, y1: ly, y2: ly, stroke: g[0], "stroke-width": 2, "stroke-dasharray": g[1] }));
        svg.appendChild(s("text", { x: x1 - 140, y: ly + 4, "font-size": 12 }, g[2]));
      });
      box.appendChild(svg);
    }
    if (!P && layers.length) { state.layer = layers[0]; state.head = heads[0]; }
    listeners.push(update);
  }

  // ---- Tables ----
  function buildTables() {
    var root = document.getElementById("tables");
    if (!root || !D.tables) return;
    D.tables.forEach(function (T, ti) {
      var box = h("div", { class: "tbl", id: "tbl-" + ti, "data-name": T.name });
      var hd = h("h3", {}, T.name);
      box.appendChild(hd);
      var shown = T.rows.length;
      box.appendChild(h("p", { class: "note" }, shown < T.total ? "first " + shown + " of " + T.total + " rows embedded (open " + T.name + " for all)" : T.total + " rows"));
      var filter = h("input", { type: "search", class: "tbl-filter", size: 50, placeholder: "filter: text, or column op value (layer=3 induction_score>0.5), space = and" });
      box.appendChild(filter);
      var count = h("span", { class: "note tbl-count" });
      box.appendChild(count);
      var scroll = h("div", { class: "scroll" }), table = h("table");
      scroll.appendChild(table); box.appendChild(scroll); root.appendChild(box);
      var names = T.columns.map(function (c) { return c.name; });
      var li = names.indexOf("layer"), hi = names.indexOf("head");
      var clickable = li >= 0 && hi >= 0 && (P || D.lag);
      var sortCol = -1, sortDir = 1;
      function matches(row, terms) {
        return terms.every(function (t) {
          var m = /^([A-Za-z_][\w]*)(<=|>=|!=|=|<|>)(.+)$/.exec(t);
          if (m && names.indexOf(m[1]) >= 0) {
            var v = row[names.indexOf(m[1])], w = m[3], nv = parseFloat(w);
            if (typeof v === "number" && !isNaN(nv)) {
              return { "=": v === nv, "!=": v !== nv, "<": v < nv, ">": v > nv, "<=": v <= nv, ">=": v >= nv }[m[2]];
            }
            var sv = String(v);
            return m[2] === "=" ? sv === w : m[2] === "!=" ? sv !== w : false;
          }
          t = t.toLowerCase();
          return row.some(function (v) { return String(v === null ? "NaN" : v).toLowerCase().indexOf(t) >= 0; });
        });
      }
      function render() {
        var terms = filter.value.trim().split(/\s+/).filter(Boolean);
        var rows = T.rows.filter(function (r) { return matches(r, terms); });
        if (sortCol >= 0) rows.sort(function (a, b) {
          var x = a[sortCol], y = b[sortCol];
          if (x === null) return 1; if (y === null) return -1;
          return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
        });
        count.textContent = " " + rows.length + " shown";
        table.innerHTML = "";
        var tr = h("tr");
        T.columns.forEach(function (c, k) {
          var th = h("th", { "data-col": c.name, title: "click to sort" }, c.name + (k === sortCol ? (sortDir > 0 ? " ▲" : " ▼") : ""));
          th.onclick = function () { sortDir = sortCol === k ? -sortDir : 1; sortCol = k; render(); };
          tr.appendChild(th);
        });
        table.appendChild(tr);
        rows.forEach(function (r) {
          var row = h("tr", clickable ? { class: "clickable", title: "select this head" } : {});
          r.forEach(function (v, k) { row.appendChild(h("td", T.columns[k].kind === "num" ? { class: "num" } : {}, fmt(v))); });
          if (clickable) row.onclick = function () { select(r[li], r[hi]); var t = document.getElementById(P ? "attention" : "lag-crp"); if (t) t.scrollIntoView(); };
          table.appendChild(row);
        });
      }
      filter.oninput = render;
      render();
    });
  }

  buildViewer();
  buildLag();
  buildTables();
  if (P) state.layer = P.layers[0];
  listeners.forEach(function (f) { f(); });
})();
