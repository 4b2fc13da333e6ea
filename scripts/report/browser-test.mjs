// The report page in a real browser (scripts/report/test-browser.sh runs this):
//
//     node browser-test.mjs RUN_DIR OUT_DIR
//
// Opens RUN_DIR/index.html (a batch, or a single run) over file:// in Debian's headless chromium
// (CHROMIUM, default /usr/bin/chromium) and every report page it links (`a.page`). On each page:
// no console error, no page error, no request that is not file://, every link and image
// resolves to an existing file (images decode); on each page with an attention viewer: click
// the top induction head's button (else the last grid cell), hover the last token, and check
// that the weights the page shows equal the patterns file's (safetensors, read here) to the
// quantization step. Every dashboard.html below RUN_DIR (`engram sae dashboard`): search the
// last firing latent by index, check its contexts and maximum tokens against the embedded data,
// an out-of-range index, the frequency sort. Writes OUT_DIR/screenshot-*.png and
// OUT_DIR/browser-test.json (page weight and load time per page). Exit 1 on any failure.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [runDir, outDir] = process.argv.slice(2);
if (!runDir || !outDir) {
  console.error("usage: node browser-test.mjs RUN_DIR OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const failures = [];
const fail = (page, msg) => failures.push(`${page}: ${msg}`);

// ---- safetensors (F16 / F32 / U32) ----
function f16(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const base = 8 + n, out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = t.data_offsets, raw = buf.subarray(base + a, base + b);
    let get;
    if (t.dtype === "F16") get = (i) => f16(raw.readUInt16LE(2 * i));
    else if (t.dtype === "F32") get = (i) => raw.readFloatLE(4 * i);
    else if (t.dtype === "U32") get = (i) => raw.readUInt32LE(4 * i);
    else continue;
    out[name] = { shape: t.shape, get };
  }
  return out;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--allow-file-access-from-files"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const results = [];

async function checkPage(file, label) {
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
  page.on("pageerror", (e) => errors.push("page error: " + e.message));
  page.on("request", (r) => { if (!r.url().startsWith("file://") && !r.url().startsWith("data:")) errors.push("network request: " + r.url()); });
  page.on("requestfailed", (r) => errors.push("request failed: " + r.url()));
  const t0 = Date.now();
  await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
  const wall = Date.now() - t0;
  const nav = await page.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    return { load_ms: n.loadEventEnd - n.startTime, dom_ms: n.domContentLoadedEventEnd - n.startTime };
  });
  // Links and images: every one resolves to an existing file; images decode.
  const refs = await page.evaluate(async () => {
    const imgs = [...document.images];
    imgs.forEach((i) => { i.loading = "eager"; });
    const bad = [];
    for (const i of imgs) { try { await i.decode(); } catch (e) { bad.push(i.src); } }
    return {
      links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
      images: imgs.map((i) => i.src),
      undecoded: bad,
    };
  });
  for (const u of [...refs.links, ...refs.images]) {
    if (!u.startsWith("file://")) { fail(label, `non-file link ${u}`); continue; }
    const p = fileURLToPath(u.split("#")[0]);
    if (!fs.existsSync(p)) fail(label, `link to a missing file ${p}`);
  }
  for (const u of refs.undecoded) fail(label, `image does not decode: ${u}`);
  const weight = refs.images.reduce((s, u) => s + fs.statSync(fileURLToPath(u)).size, fs.statSync(file).size);
  const r = { page: path.relative(runDir, file), html_bytes: fs.statSync(file).size, weight_bytes: weight, load_ms: Math.round(nav.load_ms), dom_ms: Math.round(nav.dom_ms), goto_ms: wall, links: refs.links.length, images: refs.images.length };

  // The attention viewer.
  if (await page.$("#pv-grid")) {
    const info = await page.evaluate(() => {
      const D = JSON.parse(document.getElementById("engram-data").textContent);
      return { source: D.patterns.source, layers: D.patterns.layers, heads: D.patterns.heads, seq: D.patterns.seqs[0], top: D.top };
    });
    const button = await page.$("#pv-top button.pv-top");
    let want;
    if (button) {
      want = [+(await button.getAttribute("data-layer")), +(await button.getAttribute("data-head"))];
      await button.click();
    } else {
      want = [info.layers[info.layers.length - 1], info.heads - 1];
      await page.click(`#pv-grid canvas[data-layer="${want[0]}"][data-head="${want[1]}"]`);
    }
    const st = await page.evaluate(() => ({ layer: window.engramViewer.layer, head: window.engramViewer.head }));
    if (st.layer !== want[0] || st.head !== want[1]) fail(label, `clicked L${want[0]}H${want[1]}, viewer shows L${st.layer}H${st.head}`);
    const sel = await page.$$eval("#pv-grid canvas.sel", (cs) => cs.map((c) => [+c.dataset.layer, +c.dataset.head]));
    if (sel.length !== 1 || sel[0][0] !== want[0] || sel[0][1] !== want[1]) fail(label, `grid selection ${JSON.stringify(sel)}`);
    const n = info.seq.tokens.length, dst = n - 1;
    await page.hover(`#pv-tokens .tok[data-pos="${dst}"]`);
    const shown = await page.$$eval("#pv-tokens .tok", (ss) => ss.map((s) => s.getAttribute("data-attn")));
    const readout = await page.textContent("#pv-readout");
    if (!readout.startsWith(`L${want[0]} H${want[1]}`)) fail(label, `readout says ${JSON.stringify(readout.slice(0, 20))}`);
    const st_file = path.join(path.dirname(file), info.source);
    const T = readSafetensors(st_file)[`blocks.${want[0]}.attn.hook_pattern`];
    const [, H, Q, K] = T.shape;
    const s = info.seq.index, pos = info.seq.positions;
    let maxErr = 0, checked = 0;
    for (let j = 0; j < n; j++) {
      if (j > dst) { if (shown[j] !== null) fail(label, `later token ${j} has a weight`); continue; }
      const v = T.get(((s * H + want[1]) * Q + pos[dst]) * K + pos[j]);
      if (shown[j] === null) { fail(label, `token ${j} shows no weight`); continue; }
      maxErr = Math.max(maxErr, Math.abs(+shown[j] - v));
      checked++;
    }
    // Quantization (1/510) plus the 4-decimal display.
    if (!(maxErr <= 0.5 / 255 + 6e-5)) fail(label, `shown weights differ from ${info.source} by ${maxErr}`);
    r.viewer = { head: `L${want[0]}H${want[1]}`, destination: dst, weights_checked: checked, max_abs_error: maxErr };
    // The lag-CRP view follows the selection.
    if (await page.$("#lag-svg")) {
      const title = await page.textContent("#lag-svg text");
      if (!title.includes(`L${want[0]}H${want[1]}`)) fail(label, `lag-CRP view shows ${title}`);
    }
    // A sortable table: sorting the heads table by a column orders it.
    const th = await page.$('.tbl[data-name$="heads.parquet"] th[data-col="cmr_distance"]');
    if (th) {
      await th.click();
      const vals = await page.$$eval('.tbl[data-name$="heads.parquet"] tr td:nth-child(' + (await th.evaluate((e) => [...e.parentNode.children].indexOf(e) + 1)) + ")", (tds) => tds.map((t) => parseFloat(t.textContent)));
      const fin = vals.filter((x) => !isNaN(x));
      if (fin.some((x, i) => i > 0 && x < fin[i - 1])) fail(label, "heads table not sorted by cmr_distance after a click");
    }
  }
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(outDir, `screenshot-${label.replace(/[^\w.-]+/g, "_")}.png`), fullPage: true });
  for (const e of errors) fail(label, e);
  results.push(r);
  const pages = await page.$$eval("a.page", (as) => as.map((a) => a.href));
  await page.close();
  return pages;
}

const index = path.resolve(runDir, "index.html");
if (!fs.existsSync(index)) { console.error(`no ${index}`); process.exit(1); }
const linked = await checkPage(index, "index");
for (const u of linked) {
  const f = fileURLToPath(u);
  await checkPage(f, path.relative(path.resolve(runDir), path.dirname(f)) || "run");
}
// Feature dashboards (`engram sae dashboard`): search a latent by index, check the card shows
// that latent's contexts as the embedded data has them, with the maximum token marked.
async function checkDashboard(file, label) {
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
  page.on("pageerror", (e) => errors.push("page error: " + e.message));
  page.on("request", (r) => { if (!r.url().startsWith("file://") && !r.url().startsWith("data:")) errors.push("network request: " + r.url()); });
  const t0 = Date.now();
  await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
  const wall = Date.now() - t0;
  const D = await page.evaluate(() => JSON.parse(document.getElementById("dashboard-data").textContent));
  const firing = D.latents.filter((l) => l.ctx.length > 0);
  // The last firing latent (not the one shown first).
  const l = firing.length ? firing[firing.length - 1] : D.latents[D.latents.length - 1];
  await page.fill("#search", String(l.i));
  const title = await page.textContent("#latent-title");
  if (title.trim() !== `Latent ${l.i}`) fail(label, `searched ${l.i}, card shows ${JSON.stringify(title)}`);
  const rows = await page.$$eval("#contexts .ctx", (cs) => cs.map((c) => ({ w: +c.dataset.window, text: [...c.querySelectorAll(".tok")].map((t) => t.textContent).join(""), max: c.querySelector(".tok.max")?.textContent ?? null })));
  if (rows.length !== l.ctx.length) fail(label, `latent ${l.i}: ${rows.length} contexts shown, the data has ${l.ctx.length}`);
  const show = (s) => s.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  l.ctx.forEach((c, k) => {
    const r = rows[k];
    if (!r) return;
    const text = c.t.map((t) => show(D.vocab[t])).join("");
    if (r.w !== c.w || r.text !== text) fail(label, `latent ${l.i} context ${k}: shows ${JSON.stringify(r.text)} (window ${r.w}), data ${JSON.stringify(text)} (window ${c.w})`);
    if (r.max !== show(D.vocab[c.t[c.p - c.s]])) fail(label, `latent ${l.i} context ${k}: max token ${JSON.stringify(r.max)}`);
  });
  // A latent not in the dashboard says so.
  await page.fill("#search", String(D.meta.d_sae + 5));
  if (!(await page.$("#missing"))) fail(label, "searching a latent out of range shows no message");
  // Sorting by frequency puts the most frequent latent first.
  await page.selectOption("#sort", "freq");
  const first = await page.$eval("#list button", (b) => +b.dataset.i);
  const top = D.latents.slice().sort((a, b) => b.freq - a.freq || a.i - b.i)[0];
  if (first !== top.i) fail(label, `sorted by frequency, the list starts with ${first}, not ${top.i}`);
  await page.fill("#search", String(l.i));
  await page.screenshot({ path: path.join(outDir, `screenshot-${label.replace(/[^\w.-]+/g, "_")}.png`), fullPage: false });
  for (const e of errors) fail(label, e);
  results.push({ page: path.relative(runDir, file), html_bytes: fs.statSync(file).size, weight_bytes: fs.statSync(file).size, goto_ms: wall, dashboard: { latent: l.i, contexts: rows.length, latents: D.latents.length } });
  await page.close();
}
function findDashboards(dir, out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() && e.name !== "browser-test" && !e.name.startsWith(".")) findDashboards(p, out);
    else if (e.isFile() && e.name === "dashboard.html") out.push(p);
  }
  return out;
}
for (const f of findDashboards(path.resolve(runDir))) {
  await checkDashboard(f, "dashboard-" + (path.relative(path.resolve(runDir), path.dirname(f)) || "run"));
}
await browser.close();
fs.writeFileSync(path.join(outDir, "browser-test.json"), JSON.stringify({ pages: results, failures }, null, 2));
for (const r of results) {
  if (r.dashboard) { console.log(`${r.page}: ${(r.html_bytes / 1e3).toFixed(0)} KB, loaded in ${r.goto_ms} ms; latent ${r.dashboard.latent} of ${r.dashboard.latents}: ${r.dashboard.contexts} contexts as embedded`); continue; }
  console.log(`${r.page}: ${(r.html_bytes / 1e3).toFixed(0)} KB html, ${(r.weight_bytes / 1e3).toFixed(0)} KB with images, load ${r.load_ms} ms${r.viewer ? `, viewer ${r.viewer.head}: ${r.viewer.weights_checked} weights within ${r.viewer.max_abs_error.toExponential(2)}` : ""}`);
}
if (failures.length) {
  for (const f of failures) console.error("FAILED: " + f);
  process.exit(1);
}
console.log(`browser test: ${results.length} pages OK`);
