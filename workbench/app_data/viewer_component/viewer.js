// The workbench's multiplanar viewer (a Streamlit component without a build step).
//
// Python (workbench/app_pages/review.py, data from workbench/app_data/multiplanar.py) sends one item's
// description: the URLs of its CT (int16 HU, display RAS order, x fastest), label volume, item mask,
// heat map and 3D projections. This file fetches them once per item (and prefetches the next item's),
// draws axial / coronal / sagittal at the scan's full resolution in radiological convention (patient
// right on screen left) with a crosshair, window/level, class overlays, the heat map and a 3D view, and
// sends back decisions, navigation and edits as small JSON actions. Text from Python is only ever set
// as textContent, never as HTML.
//
// A decision key draws the prefetched next item at once (its files and description are in memory) when
// the page says it will serve that item next (``draw_ahead``); the page's rerun then answers with the
// item it really serves, and a different one (decided elsewhere meanwhile) replaces it. Actions go to the
// page one at a time: one sent while the page has not answered the previous waits for that answer, so a
// fast reviewer's second key is never lost in Streamlit's single component value.
"use strict";

// ------------------------------------------------------------------------------------ Streamlit protocol
function post(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
}
// one action at a time (the page keeps only the newest component value): the next waits for the answer
// (``args.done``), or 10 s when a page run never answers (it stopped before the viewer)
const ANSWER_WAIT_MS = 10000;
let inFlight = null; // {id, at} of the action the page has not answered yet
const held = []; // actions waiting for it
function postAction(action) {
  inFlight = { id: action.id, at: performance.now() };
  post("streamlit:setComponentValue", { value: action, dataType: "json" });
}
function flushHeld() {
  if (held.length && (!inFlight || performance.now() - inFlight.at >= ANSWER_WAIT_MS)) postAction(held.shift());
  if (held.length) setTimeout(flushHeld, ANSWER_WAIT_MS);
}
function sendAction(action) {
  action.id = Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  if (A && A.target) action.target = A.target; // the item on screen when the key was pressed
  if (inFlight && performance.now() - inFlight.at < ANSWER_WAIT_MS) {
    held.push(action);
    setTimeout(flushHeld, ANSWER_WAIT_MS);
  } else {
    postAction(action);
  }
  return action.id;
}
function setHeight() {
  post("streamlit:setFrameHeight", { height: Math.ceil(root.getBoundingClientRect().height) + 8 });
}

// ------------------------------------------------------------------------------------------------ state
const VIEWS = ["axial", "coronal", "sagittal"];
const EDGES = {
  axial: { left: "R", right: "L", top: "A", bottom: "P" },
  coronal: { left: "R", right: "L", top: "S", bottom: "I" },
  sagittal: { left: "A", right: "P", top: "S", bottom: "I" },
};
let A = null; // the latest args
let V = null; // the drawn item: {id, viewKey, shape, spacing, ct, lab, item, heat, mip, classes}
let loading = null; // the item id being loaded
const cache = new Map(); // url -> Promise<ArrayBuffer>
let ahead = null; // the next item, ready to draw: {meta: url, item, target} once its files are in memory
const S = {
  cross: [0, 0, 0], active: "axial", ww: 400, wl: 40, overlay: true, heat: false, opacity: 0.4,
  heatOpacity: 0.5, hidden: new Set(), tool: "navigate", radius: 5, depth: 0, mip: "coronal",
  zoom: { axial: [1, 0, 0], coronal: [1, 0, 0], sagittal: [1, 0, 0] },
};
let stroke = null; // a brush stroke in progress: {view, points, erase, changes}
let pendingEdit = null; // {id, changes} of a stroke sent, until the next item arrives
// timings for the tests and benchmarks (performance.now() of this frame)
// (``answer``: the newest page answer to an action: {done, item, t, wall})
window.__viewer = { key: null, drawn: null, answer: null, slices: [], errors: [] };

// --------------------------------------------------------------------------------------------- the DOM
const root = document.getElementById("root");
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const title = el("div", "title");
const status = el("div", "status");
const tools = el("div", "bar");
const layers = el("div", "bar");
const grid = el("div", "grid");
root.append(title, tools, layers, grid, status);
const panes = {};
for (const v of [...VIEWS, "3d"]) {
  const p = el("div", "pane");
  const c = document.createElement("canvas");
  p.append(c, el("div", "name", v === "3d" ? "3D (item mask)" : v));
  if (v !== "3d") {
    for (const edge of ["left", "right", "top", "bottom"]) {
      const d = el("div", "edge");
      d.dataset.edge = edge;
      p.append(d);
    }
    const cur = el("div", "cursor");
    p.append(cur, el("div", "hline"), el("div", "vline"));
    p.dataset.view = v;
  }
  grid.append(p);
  panes[v] = { box: p, canvas: c, ctx: c.getContext("2d"), img: null };
}
const buttons = {};
function button(label, onClick, group) {
  const b = el("button", "", label);
  b.type = "button";
  b.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
  tools.append(b);
  if (group) buttons[group] = b;
  return b;
}
for (const [tool, label] of [["navigate", "Crosshair"], ["brush", "Brush"], ["eraser", "Eraser"],
  ["keep_component", "Keep component"], ["remove_component", "Remove component"], ["fill_hole", "Fill hole"]]) {
  button(label, () => setTool(tool), "tool:" + tool);
}
const radiusBox = el("input");
radiusBox.type = "number"; radiusBox.min = "0.5"; radiusBox.step = "0.5"; radiusBox.value = S.radius;
radiusBox.addEventListener("change", () => { S.radius = Math.max(0.5, Number(radiusBox.value) || 5); });
const depthBox = el("input");
depthBox.type = "number"; depthBox.min = "0"; depthBox.step = "1"; depthBox.value = S.depth;
depthBox.addEventListener("change", () => { S.depth = Math.max(0, Math.round(Number(depthBox.value) || 0)); });
const sizeLabel = el("label", "", "brush mm");
sizeLabel.append(radiusBox);
const depthLabel = el("label", "", "± slices");
depthLabel.append(depthBox);
tools.append(sizeLabel, depthLabel);
const wlLabel = el("span");
tools.append(wlLabel);

function setTool(tool) {
  S.tool = tool;
  for (const [k, b] of Object.entries(buttons)) {
    if (k.startsWith("tool:")) b.classList.toggle("on", k === "tool:" + tool);
  }
  for (const v of VIEWS) panes[v].box.style.cursor = tool === "navigate" ? "crosshair" : "cell";
}
function say(text, error) {
  status.textContent = text || "";
  status.classList.toggle("error", !!error);
}

// ------------------------------------------------------------------------------------------- fetching
function get(url, gz) {
  if (!cache.has(url)) {
    const p = fetch(url).then((r) => {
      if (!r.ok) throw new Error(r.status + " " + url);
      if (!gz) return r.arrayBuffer();
      return new Response(r.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
    });
    p.catch(() => cache.delete(url));
    cache.set(url, p);
  }
  return cache.get(url);
}
// fetch ahead; a file the server's preload has not written yet is asked again (every 0.3 s, ``tries`` times)
function prefetchOne(url, gz, tries) {
  return get(url, gz).catch(() =>
    tries > 0 ? new Promise((r) => setTimeout(r, 300)).then(() => prefetchOne(url, gz, tries - 1)) : null);
}
function prefetch(urls, tries) {
  return Promise.all(urls.map(([url, gz]) => prefetchOne(url, gz, tries)));
}
function itemUrls(item) {
  const u = item.urls;
  const out = [[u.ct, false], [u.labels, true], [u.item, true], [u.mip, true]];
  if (u.heat) out.push([u.heat, true]);
  if (u.meta) out.push([u.meta, false]);
  return out;
}
function keepCache(wanted) {
  if (ahead && ahead.item && wanted.has(ahead.meta)) for (const u of itemUrls(ahead.item)) wanted.add(u[0]);
  for (const url of [...cache.keys()]) if (!wanted.has(url)) cache.delete(url);
}
// The next item as the page would send it: its description file (names relative to the store's folder)
// with the page's title line and view key.
function aheadItem(next, meta) {
  const d = JSON.parse(new TextDecoder().decode(meta));
  const urls = {};
  for (const [k, name] of Object.entries(d.urls)) urls[k] = name ? next.base + name : null;
  return Object.assign(d, { urls: urls, title: next.title, view_key: next.view_key });
}
// Fetch the next item (retrying while the server's preload writes it), then its heat map, which only
// its description names; ``ahead`` holds it once everything is in memory.
function prefetchNext(next, tries) {
  const mine = { meta: next.urls.meta, item: null, target: next.target, ready: null };
  ahead = mine;
  mine.ready = prefetch(itemUrls(next), tries).then((got) => {
    const meta = got[got.length - 1];
    if (!next.urls.meta || !meta) return null;
    const item = aheadItem(next, meta);
    return prefetch(itemUrls(item), tries).then((all) => {
      if (all.every((b) => b !== null) && ahead === mine) mine.item = item;
    });
  });
  return mine.ready;
}
// A decision key: draw the next item now, when the page said it serves it next and it is in memory.
function drawAhead(what, actionId, label) {
  if (!A || !(A.draw_ahead || []).includes(what) || !ahead || !ahead.item || (V && V.id === ahead.item.id)) return false;
  const next = ahead;
  ahead = null;
  // one step ahead at most; later actions name the item now on screen
  A = Object.assign({}, A, { target: next.target, draw_ahead: [], prefetch: [], message: label });
  window.__viewer.drawnAhead = { id: next.item.id, action: actionId };
  loading = next.item.id;
  // in a task of its own: the page (same thread) sends the action to the server first
  setTimeout(() => {
    if (loading !== next.item.id) return; // the page answered with another item meanwhile
    load(next.item).catch((err) => { loading = null; window.__viewer.errors.push(String(err)); });
  }, 0);
  return true;
}

async function load(item) {
  loading = item.id;
  const u = item.urls;
  const [ct, lab, msk, mip, heat] = await Promise.all([
    get(u.ct, false), get(u.labels, true), get(u.item, true), get(u.mip, true),
    u.heat ? get(u.heat, true) : Promise.resolve(null),
  ]);
  if (loading !== item.id) return; // a newer item arrived meanwhile
  const [nx, ny, nz] = item.shape;
  const planes = {};
  let off = 0;
  for (const [v, r, c] of [["coronal", nz, nx], ["sagittal", nz, ny], ["axial", ny, nx]]) {
    planes[v] = { rows: r, cols: c, data: new Uint8Array(mip, off, r * c) };
    off += r * c;
  }
  const sameCase = V && V.viewKey === item.view_key;
  V = {
    id: item.id, viewKey: item.view_key, shape: item.shape, spacing: item.spacing,
    ct: new Int16Array(ct), lab: new Uint8Array(lab), item: new Uint8Array(msk), itemOwned: false,
    heat: heat ? new Uint8Array(heat) : null, mip: planes, classes: item.classes, itemClass: item.item_class,
  };
  pendingEdit = null;
  if (!sameCase) {
    S.cross = item.start.slice();
    for (const v of VIEWS) S.zoom[v] = [1, 0, 0];
  }
  title.textContent = item.title;
  buildLayers();
  drawAll();
  const drawn = { id: item.id, t: performance.now(), wall: Date.now(), painted: null };
  window.__viewer.drawn = drawn;
  requestAnimationFrame(() => { drawn.painted = performance.now(); }); // the frame that shows it
  say(A.message || "");
}

// ------------------------------------------------------------------------------------------ rendering
let greyLut = new Uint8Array(4096);
let lutFor = "";
function updateLut() {
  const key = S.ww + "/" + S.wl;
  if (key === lutFor) return;
  lutFor = key;
  const w = Math.max(1, S.ww), lo = S.wl - w / 2;
  for (let i = 0; i < 4096; i++) {
    const g = ((i - 1024 - lo) * 255) / w;
    greyLut[i] = g < 0 ? 0 : g > 255 ? 255 : g;
  }
  wlLabel.textContent = "W " + Math.round(S.ww) + " / L " + Math.round(S.wl);
}
let heatLut = null;
function buildHeatLut() {
  heatLut = new Uint8Array(256 * 3);
  const stops = A.heat_stops; // [[bits, [r, g, b]], ...]
  for (let i = 0; i < 256; i++) {
    const h = i / 255;
    let c = stops[stops.length - 1][1];
    if (h <= stops[0][0]) c = stops[0][1];
    else {
      for (let s = 1; s < stops.length; s++) {
        if (h <= stops[s][0]) {
          const [x0, c0] = stops[s - 1], [x1, c1] = stops[s];
          const f = (h - x0) / (x1 - x0);
          c = [0, 1, 2].map((k) => c0[k] + f * (c1[k] - c0[k]));
          break;
        }
      }
    }
    heatLut.set(c.map(Math.round), i * 3);
  }
}

// plane geometry: start index, column step, row step, rows, cols, and pixel size in mm
function geometry(view) {
  const [nx, ny, nz] = V.shape, [sx, sy, sz] = V.spacing, [x, y, z] = S.cross, nxy = nx * ny;
  if (view === "axial") return { start: nx - 1 + nx * (ny - 1) + nxy * z, cs: -1, rs: -nx, rows: ny, cols: nx, rmm: sy, cmm: sx };
  if (view === "coronal") return { start: nx - 1 + nx * y + nxy * (nz - 1), cs: -1, rs: -nxy, rows: nz, cols: nx, rmm: sz, cmm: sx };
  return { start: x + nx * (ny - 1) + nxy * (nz - 1), cs: -nx, rs: -nxy, rows: nz, cols: ny, rmm: sz, cmm: sy };
}
// the display voxel under pixel (r, c) of a view, and the pixel of the crosshair
function voxelAt(view, r, c) {
  const [nx, ny, nz] = V.shape, [x, y, z] = S.cross;
  if (view === "axial") return [nx - 1 - c, ny - 1 - r, z];
  if (view === "coronal") return [nx - 1 - c, y, nz - 1 - r];
  return [x, ny - 1 - c, nz - 1 - r];
}
function crossPixel(view) {
  const [nx, ny, nz] = V.shape, [x, y, z] = S.cross;
  if (view === "axial") return [ny - 1 - y, nx - 1 - x];
  if (view === "coronal") return [nz - 1 - z, nx - 1 - x];
  return [nz - 1 - z, ny - 1 - y];
}
const AXIS = { sagittal: 0, coronal: 1, axial: 2 };

function drawPlane(view) {
  const g = geometry(view), p = panes[view];
  if (p.canvas.width !== g.cols || p.canvas.height !== g.rows) {
    p.canvas.width = g.cols; p.canvas.height = g.rows; p.img = null;
  }
  if (!p.img) p.img = p.ctx.createImageData(g.cols, g.rows);
  updateLut();
  const out = p.img.data, ct = V.ct, lab = V.lab, item = V.item, heat = S.heat ? V.heat : null;
  const a = S.overlay ? S.opacity : 0, b = 1 - a, ha = S.heatOpacity, hb = 1 - ha;
  const colors = V.classes.map((c) => (S.hidden.has(c.name) ? null : c.color));
  const ic = S.hidden.has(V.itemClass.name) ? null : V.itemClass.color;
  const floor = Math.round(A.heat_floor * 255);
  let o = 0;
  for (let r = 0, rowStart = g.start; r < g.rows; r++, rowStart += g.rs) {
    for (let c = 0, i = rowStart; c < g.cols; c++, i += g.cs) {
      const grey = greyLut[ct[i] + 1024];
      let R = grey, G = grey, B = grey;
      if (a > 0) {
        const l = lab[i];
        const col = l ? colors[l - 1] : null;
        if (col) { R = b * R + a * col[0]; G = b * G + a * col[1]; B = b * B + a * col[2]; }
        if (item[i] && ic) { R = b * R + a * ic[0]; G = b * G + a * ic[1]; B = b * B + a * ic[2]; }
      }
      if (heat) {
        const h = heat[i];
        if (h >= floor) { const k = h * 3; R = hb * R + ha * heatLut[k]; G = hb * G + ha * heatLut[k + 1]; B = hb * B + ha * heatLut[k + 2]; }
      }
      out[o] = R; out[o + 1] = G; out[o + 2] = B; out[o + 3] = 255; o += 4;
    }
  }
  p.ctx.putImageData(p.img, 0, 0);
  place(view, g.rows * g.rmm, g.cols * g.cmm);
  // the crosshair: one screen pixel wide through the middle of the crosshair voxel
  const [cr, cc] = crossPixel(view), cs = p.canvas.style;
  const left = parseFloat(cs.left), top = parseFloat(cs.top), w = parseFloat(cs.width), h = parseFloat(cs.height);
  Object.assign(p.box.querySelector(".hline").style, { left: left + "px", width: w + "px", top: top + ((cr + 0.5) * h) / g.rows + "px" });
  Object.assign(p.box.querySelector(".vline").style, { top: top + "px", height: h + "px", left: left + ((cc + 0.5) * w) / g.cols + "px" });
  const edges = EDGES[view];
  for (const d of p.box.querySelectorAll(".edge")) d.textContent = edges[d.dataset.edge];
  p.box.classList.toggle("active", view === S.active);
  const n = V.shape[AXIS[view]], s = S.cross[AXIS[view]];
  p.box.querySelector(".name").textContent = view + " " + (s + 1) + "/" + n;
}
// fit the canvas (physical size h x w mm) into its pane, with the pane's zoom and pan
function place(view, hmm, wmm) {
  const p = panes[view], W = p.box.clientWidth, H = p.box.clientHeight;
  const [zoom, px, py] = S.zoom[view] || [1, 0, 0];
  const scale = Math.min(W / wmm, H / hmm) * zoom;
  const w = wmm * scale, h = hmm * scale;
  Object.assign(p.canvas.style, {
    width: w + "px", height: h + "px", left: (W - w) / 2 + px + "px", top: (H - h) / 2 + py + "px",
  });
  p.mmPx = scale;
  const edges = p.box.querySelectorAll(".edge");
  for (const d of edges) {
    const e = d.dataset.edge;
    d.style.left = e === "left" ? "4px" : e === "right" ? W - 14 + "px" : W / 2 - 4 + "px";
    d.style.top = e === "top" ? "2px" : e === "bottom" ? H - 18 + "px" : H / 2 - 8 + "px";
  }
}
function draw3d() {
  const p = panes["3d"], m = V.mip[S.mip], ic = V.itemClass.color;
  if (p.canvas.width !== m.cols || p.canvas.height !== m.rows) { p.canvas.width = m.cols; p.canvas.height = m.rows; }
  const img = p.ctx.createImageData(m.cols, m.rows);
  for (let i = 0, o = 0; i < m.data.length; i++, o += 4) {
    const s = m.data[i] / 255;
    img.data[o] = s * ic[0] + (s ? 40 : 0); img.data[o + 1] = s * ic[1] + (s ? 40 : 0);
    img.data[o + 2] = s * ic[2] + (s ? 40 : 0); img.data[o + 3] = 255;
  }
  p.ctx.putImageData(img, 0, 0);
  const [sx, sy, sz] = V.spacing;
  const mm = { coronal: [m.rows * sz, m.cols * sx], sagittal: [m.rows * sz, m.cols * sy], axial: [m.rows * sy, m.cols * sx] }[S.mip];
  const W = p.box.clientWidth, H = p.box.clientHeight, scale = Math.min(W / mm[1], H / mm[0]);
  Object.assign(p.canvas.style, {
    width: mm[1] * scale + "px", height: mm[0] * scale + "px",
    left: (W - mm[1] * scale) / 2 + "px", top: (H - mm[0] * scale) / 2 + "px",
  });
  p.box.querySelector(".name").textContent =
    "3D: " + V.itemClass.name + " seen from the " + { coronal: "front", sagittal: "left", axial: "feet" }[S.mip] + " (click: turn)";
}
function sizePanes() {
  const w = Math.max(200, (root.clientWidth - 8) / 2);
  for (const v of [...VIEWS, "3d"]) panes[v].box.style.height = Math.round(w * 0.78) + "px";
}
function drawAll() {
  if (!V) return;
  sizePanes();
  for (const v of VIEWS) drawPlane(v);
  draw3d();
  setHeight();
}

function buildLayers() {
  layers.replaceChildren();
  const add = (name, color) => {
    const l = el("label");
    const box = el("input");
    box.type = "checkbox"; box.checked = !S.hidden.has(name);
    box.addEventListener("change", () => { box.checked ? S.hidden.delete(name) : S.hidden.add(name); drawAll(); });
    const sw = el("span", "swatch");
    sw.style.background = "rgb(" + color.join(",") + ")";
    l.append(box, sw, document.createTextNode(name));
    layers.append(l);
  };
  add(V.itemClass.name, V.itemClass.color);
  for (const c of V.classes) add(c.name, c.color);
  const op = el("input");
  op.type = "range"; op.min = "0"; op.max = "1"; op.step = "0.05"; op.value = S.opacity;
  op.addEventListener("input", () => { S.opacity = Number(op.value); drawAll(); });
  const opl = el("label", "", "opacity");
  opl.append(op);
  const heat = el("input");
  heat.type = "checkbox"; heat.checked = S.heat; heat.disabled = !V.heat;
  heat.addEventListener("change", () => { S.heat = heat.checked; drawAll(); });
  const hl = el("label", "", V.heat ? "uncertainty heat map" : "no uncertainty map");
  hl.prepend(heat);
  layers.append(opl, hl);
  for (const [name, wl] of Object.entries(A.presets)) {
    const b = el("button", "", name + " " + wl[0] + "/" + wl[1]);
    b.type = "button";
    b.addEventListener("click", () => { S.ww = wl[0]; S.wl = wl[1]; drawAll(); });
    layers.append(b);
  }
}

// --------------------------------------------------------------------------------------- interaction
function moveSlice(view, step) {
  const ax = AXIS[view], n = V.shape[ax];
  const s = Math.min(n - 1, Math.max(0, S.cross[ax] + step));
  if (s === S.cross[ax]) return;
  S.cross[ax] = s;
  for (const v of VIEWS) drawPlane(v); // the crosshair moves in the other two
}
function pixelOf(view, ev) {
  const c = panes[view].canvas, r = c.getBoundingClientRect();
  const col = Math.floor(((ev.clientX - r.left) / r.width) * c.width);
  const row = Math.floor(((ev.clientY - r.top) / r.height) * c.height);
  if (row < 0 || col < 0 || row >= c.height || col >= c.width) return null;
  return [row, col];
}
function discPaint(view, vox, erase, changes) {
  if (!V.itemOwned) { V.item = V.item.slice(); V.itemOwned = true; } // the fetched buffer stays as fetched
  const [nx, ny] = V.shape, sp = V.spacing, ax = AXIS[view];
  const [a, b] = [0, 1, 2].filter((k) => k !== ax);
  const ra = Math.floor(S.radius / sp[a]), rb = Math.floor(S.radius / sp[b]);
  for (let d = -S.depth; d <= S.depth; d++) {
    const s = vox[ax] + d;
    if (s < 0 || s >= V.shape[ax]) continue;
    for (let i = -ra; i <= ra; i++) {
      for (let j = -rb; j <= rb; j++) {
        if ((i * sp[a]) ** 2 + (j * sp[b]) ** 2 > S.radius ** 2) continue;
        const p = vox.slice();
        p[ax] = s; p[a] += i; p[b] += j;
        if (p[a] < 0 || p[b] < 0 || p[a] >= V.shape[a] || p[b] >= V.shape[b]) continue;
        const idx = p[0] + nx * (p[1] + ny * p[2]);
        const want = erase ? 0 : 1;
        if (V.item[idx] !== want) { changes.push(idx, V.item[idx]); V.item[idx] = want; }
      }
    }
  }
}
for (const view of VIEWS) {
  const box = panes[view].box, cur = box.querySelector(".cursor");
  let drag = null;
  box.addEventListener("contextmenu", (e) => e.preventDefault());
  box.addEventListener("wheel", (e) => {
    if (!V) return;
    e.preventDefault();
    S.active = view;
    if (e.ctrlKey) { S.zoom[view][0] = Math.min(20, Math.max(0.5, S.zoom[view][0] * (e.deltaY < 0 ? 1.15 : 1 / 1.15))); drawPlane(view); }
    else moveSlice(view, e.deltaY < 0 ? 1 : -1);
  }, { passive: false });
  box.addEventListener("pointerdown", (e) => {
    if (!V) return;
    S.active = view;
    box.setPointerCapture(e.pointerId);
    const px = pixelOf(view, e);
    if (e.button === 2) { drag = { kind: "wl", x: e.clientX, y: e.clientY, ww: S.ww, wl: S.wl }; return; }
    if (e.button === 1 || e.shiftKey) { drag = { kind: "pan", x: e.clientX, y: e.clientY, z: S.zoom[view].slice() }; return; }
    if (!px) return;
    const vox = voxelAt(view, px[0], px[1]);
    if (S.tool === "navigate") { drag = { kind: "cross" }; S.cross = vox; drawAll(); return; }
    if (S.tool === "brush" || S.tool === "eraser") {
      stroke = { view: view, erase: S.tool === "eraser", points: [vox], changes: [] };
      discPaint(view, vox, stroke.erase, stroke.changes);
      drawPlane(view);
      drag = { kind: "stroke" };
      return;
    }
    sendAction({ action: S.tool, view: view, voxel: vox, depth: S.depth });
    say("saving " + S.tool.replace("_", " ") + " ...");
  });
  box.addEventListener("pointermove", (e) => {
    if (!V) return;
    const px = pixelOf(view, e);
    const p = panes[view];
    if ((S.tool === "brush" || S.tool === "eraser") && px && p.mmPx) {
      const d = 2 * S.radius * p.mmPx, r = box.getBoundingClientRect();
      Object.assign(cur.style, { display: "block", width: d + "px", height: d + "px",
        left: e.clientX - r.left - d / 2 + "px", top: e.clientY - r.top - d / 2 + "px" });
    } else cur.style.display = "none";
    if (!drag) return;
    if (drag.kind === "wl") {
      S.ww = Math.max(1, drag.ww + (e.clientX - drag.x) * 4); S.wl = drag.wl + (e.clientY - drag.y) * 2;
      drawAll();
    } else if (drag.kind === "pan") {
      S.zoom[view] = [drag.z[0], drag.z[1] + e.clientX - drag.x, drag.z[2] + e.clientY - drag.y];
      drawPlane(view);
    } else if (drag.kind === "cross" && px) {
      S.cross = voxelAt(view, px[0], px[1]); drawAll();
    } else if (drag.kind === "stroke" && px && stroke) {
      const vox = voxelAt(view, px[0], px[1]), last = stroke.points[stroke.points.length - 1];
      if (vox.some((v, k) => v !== last[k])) { stroke.points.push(vox); discPaint(view, vox, stroke.erase, stroke.changes); drawPlane(view); }
    }
  });
  const end = () => {
    if (drag && drag.kind === "stroke" && stroke) {
      const id = sendAction({ action: stroke.erase ? "eraser" : "brush", view: stroke.view, points: stroke.points, radius_mm: S.radius, depth: S.depth });
      pendingEdit = { id: id, changes: stroke.changes };
      window.__viewer.stroke = { id: id, t: performance.now(), wall: Date.now() };
      say("saving the stroke ...");
      stroke = null;
      for (const v of VIEWS) drawPlane(v);
    }
    drag = null;
  };
  box.addEventListener("pointerup", end);
  box.addEventListener("pointercancel", end);
  box.addEventListener("pointerleave", () => { cur.style.display = "none"; });
}
panes["3d"].box.addEventListener("click", () => {
  if (!V) return;
  S.mip = { coronal: "sagittal", sagittal: "axial", axial: "coronal" }[S.mip];
  draw3d();
});

const DECISIONS = ["accept", "reject", "needs_correction", "skip"];
// when the key event happened, on this frame's performance.now() clock (a key pressed in the app's page
// carries that page's clock)
function eventTime(e) {
  const win = e.view || window;
  try { return e.timeStamp + win.performance.timeOrigin - performance.timeOrigin; } catch (err) { return performance.now(); }
}
function onKey(e) {
  const t = e.target;
  if (!A || e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)) && t.type !== "checkbox" && t.type !== "range") return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const what = Object.keys(A.keys).find((k) => A.keys[k] === key);
  if (!what) return;
  e.preventDefault();
  e.stopPropagation();
  window.__viewer.key = { what: what, t: eventTime(e), wall: Date.now() };
  if (DECISIONS.includes(what)) {
    const id = sendAction({ action: "decide", decision: what });
    window.__viewer.key.action = id;
    const label = "recording " + what.replace("_", " ") + " ...";
    if (!drawAhead(what, id, label)) say(label);
    return;
  }
  if (what === "next_item" || what === "previous_item" || what === "undo") { sendAction({ action: what }); say(what.replace("_", " ") + " ..."); return; }
  if (what.startsWith("preset_")) { const wl = A.presets[what.slice(7)]; if (wl) { S.ww = wl[0]; S.wl = wl[1]; drawAll(); } return; }
  if (!V) return;
  if (what === "next_slice" || what === "previous_slice") {
    moveSlice(S.active, what === "next_slice" ? 1 : -1);
    const pressed = eventTime(e);
    requestAnimationFrame(() => window.__viewer.slices.push(performance.now() - pressed)); // drawn on screen
    return;
  }
  if (what === "toggle_overlay") { S.overlay = !S.overlay; drawAll(); return; }
  if (what === "toggle_heat") { S.heat = !S.heat && !!V.heat; buildLayers(); drawAll(); return; }
  if (what === "smaller_brush" || what === "larger_brush") {
    S.radius = Math.max(0.5, S.radius + (what === "larger_brush" ? 1 : -1)); radiusBox.value = S.radius; return;
  }
  setTool(what);
}
document.addEventListener("keydown", onKey, true);
try { // the app's page (same origin): keys work wherever the focus is, except in its text fields
  window.parent.document.addEventListener("keydown", onKey, true);
  window.addEventListener("pagehide", () => window.parent.document.removeEventListener("keydown", onKey, true));
} catch (err) { window.__viewer.errors.push(String(err)); }
window.addEventListener("resize", drawAll);

// ------------------------------------------------------------------------------------------ rendering
let renders = 0;
function render(args) {
  const first = A === null;
  A = args;
  if (inFlight && args.done === inFlight.id) { // the page answered: the next held action may go
    inFlight = null;
    if (held.length) postAction(held.shift());
  }
  const last = window.__viewer.answer;
  if (args.done && (!last || last.done !== args.done)) {
    window.__viewer.answer = { done: args.done, item: args.item ? args.item.id : null, t: performance.now(), wall: Date.now() };
  }
  if (first) { setTool(S.tool); buildHeatLut(); }
  if (!args.item) { title.textContent = args.message || ""; V = null; setHeight(); return; }
  const wanted = new Set(itemUrls(args.item).map((u) => u[0]));
  for (const next of args.prefetch || []) for (const u of itemUrls(next)) wanted.add(u[0]);
  keepCache(wanted);
  if (pendingEdit && args.done === pendingEdit.id && (!V || V.id === args.item.id)) {
    // the stroke was not saved (the page says why): take the preview back
    const ch = pendingEdit.changes;
    for (let k = 0; k < ch.length; k += 2) V.item[ch[k]] = ch[k + 1];
    pendingEdit = null;
    drawAll();
  }
  if (!V || V.id !== args.item.id) {
    if (loading !== args.item.id) {
      load(args.item).catch((err) => { loading = null; window.__viewer.errors.push(String(err)); say("cannot load the item: " + err, true); });
    }
  } else {
    say(args.message || "", !!args.error);
  }
  window.__viewer.prefetched = false;
  const n = ++renders, next = (args.prefetch || [])[0];
  if (next && (!ahead || ahead.meta !== next.urls.meta)) {
    prefetchNext(next, 100).then(() => { if (n === renders) window.__viewer.prefetched = true; });
  } else if (!next) {
    ahead = null;
    window.__viewer.prefetched = true;
  } else {
    ahead.ready.then(() => { if (n === renders) window.__viewer.prefetched = true; });
  }
  setHeight();
}
window.addEventListener("message", (ev) => {
  if (ev.data && ev.data.type === "streamlit:render") render(ev.data.args);
});
post("streamlit:componentReady", { apiVersion: 1 });
