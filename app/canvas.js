// The review canvas (the body of gr.HTML's js_on_load; see app/canvas.py): the photo with every instance
// drawn in the browser from its compressed COCO RLE; selection, review keys, classes, brush, eraser, polygon
// and box -> mask act on the local state at once and are saved in the background, one batch of edits at a
// time, through the 'save' event (the server answers with the image's new state: props.value).
// Arguments: element, trigger, props, server, upload, watch.
const root = element.querySelector('.wb-canvas');
const cv = root.querySelector('canvas.wb-view');
const ctx = cv.getContext('2d');
const stage = root.querySelector('.wb-stage');
const statusBox = root.querySelector('.wb-status');
const messageBox = root.querySelector('.wb-message');
const classBox = root.querySelector('.wb-classes');
const listBox = root.querySelector('.wb-list');
const toolBox = root.querySelector('.wb-tools');
const S = {
  imageId: null, rev: null, W: 0, H: 0, img: null, imgUrl: null, threshold: 0.5,
  instances: [], classes: [], layers: new Map(),  // id -> decoded mask layer
  sel: null, tool: 'select', drawClass: null, radius: 12,
  view: {s: 1, tx: 0, ty: 0}, fittedFor: null,
  pending: [], inflight: null, seq: 0, nextTemp: -1, doneAsked: false, saveTimer: null,
  polygon: [], drag: null, space: false, pointer: null, localMessage: '',
  cut: {clicks: [], segments: [], asked: 0},  // the scissors: clicks, each segment's edge path (null: asked)
  perf: {syncs: [], roundTrips: [], imageDrawnAt: null},  // timings the speed benchmark reads
  visit: {imageId: null, times: []},  // the times (s) of a person's inputs on this image: its active time
  refine: {id: null, positive: [], negative: []},  // the clicks of the refine tool on the selected instance
};
window.__wbCanvas = S;  // for the browser tests and benchmarks

// ---- COCO compressed RLE (pycocotools' rleFrString / rleToString) ------------------------------
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c;
    while (more) {
      c = s.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}
function rleString(counts) {
  const out = [];
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = 1;
    while (more) {
      let c = x & 0x1f; x >>= 5;
      more = (c & 0x10) ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      out.push(String.fromCharCode(c + 48));
    }
  }
  return out.join('');
}
// A mask as a layer: its bounding box (x0, y0, w, h) and the bits inside it, row-major.
function decodeLayer(counts, H, W) {
  const runs = rleCounts(counts);
  let x0 = W, y0 = H, x1 = -1, y1 = -1, at = 0;
  for (let i = 0; i < runs.length; i++) {
    const n = runs[i];
    if ((i & 1) && n > 0) {
      const ca = (at / H) | 0, cb = ((at + n - 1) / H) | 0;
      x0 = Math.min(x0, ca); x1 = Math.max(x1, cb);
      if (ca === cb) { y0 = Math.min(y0, at - ca * H); y1 = Math.max(y1, at + n - 1 - cb * H); }
      else { y0 = 0; y1 = H - 1; }
    }
    at += n;
  }
  if (x1 < 0) return {x0: 0, y0: 0, w: 0, h: 0, bits: new Uint8Array(0)};
  const w = x1 - x0 + 1, h = y1 - y0 + 1, bits = new Uint8Array(w * h);
  at = 0;
  for (let i = 0; i < runs.length; i++) {
    const n = runs[i];
    if (i & 1) {
      for (let j = at; j < at + n; j++) { const x = (j / H) | 0, y = j - x * H; bits[(y - y0) * w + (x - x0)] = 1; }
    }
    at += n;
  }
  return {x0, y0, w, h, bits};
}
function encodeLayer(L, H, W) {
  const runs = [];
  let current = 0, run = 0;
  const push = (value, n) => {
    if (n <= 0) return;
    if (value !== current) { runs.push(run); run = 0; current = value; }
    run += n;
  };
  for (let x = 0; x < W; x++) {
    if (x < L.x0 || x >= L.x0 + L.w) { push(0, H); continue; }
    push(0, L.y0);
    for (let y = 0; y < L.h; y++) push(L.bits[y * L.w + (x - L.x0)], 1);
    push(0, H - L.y0 - L.h);
  }
  runs.push(run);
  return rleString(runs);
}
function fullLayer(L, H, W) {  // the same mask on a layer of the whole image (brush and eraser paint on it)
  if (L && L.w === W && L.h === H) return L;
  const bits = new Uint8Array(W * H);
  if (L) for (let y = 0; y < L.h; y++) bits.set(L.bits.subarray(y * L.w, (y + 1) * L.w), (y + L.y0) * W + L.x0);
  return {x0: 0, y0: 0, w: W, h: H, bits};
}
function layerHas(L, x, y) {
  x = Math.floor(x); y = Math.floor(y);
  return L && x >= L.x0 && y >= L.y0 && x < L.x0 + L.w && y < L.y0 + L.h && L.bits[(y - L.y0) * L.w + (x - L.x0)] === 1;
}
function layerEmpty(L) { return !L || L.bits.indexOf(1) < 0; }

// ---- drawing ----------------------------------------------------------------------------------
function hexRgb(hex) { const n = parseInt(hex.slice(1), 16); return [(n >> 16) & 255, (n >> 8) & 255, n & 255]; }
// Paint a layer's pixels (fill ~40 %, outline solid; dashed outline for proposals) into its own canvas.
function paintLayer(inst, rect) {
  const L = inst.layer;
  if (!L || L.w === 0) return;
  if (!L.canvas || L.canvas.width !== L.w || L.canvas.height !== L.h) {
    L.canvas = document.createElement('canvas'); L.canvas.width = L.w; L.canvas.height = L.h; rect = null;
  }
  const [r, g, b] = hexRgb(inst.color);
  const dashed = inst.state === 'proposed', fill = 100, t = Math.max(1, Math.round(1.2 / Math.max(S.view.s, 0.05)));
  const rx0 = rect ? Math.max(0, rect[0] - L.x0 - t) : 0, ry0 = rect ? Math.max(0, rect[1] - L.y0 - t) : 0;
  const rx1 = rect ? Math.min(L.w, rect[2] - L.x0 + t) : L.w, ry1 = rect ? Math.min(L.h, rect[3] - L.y0 + t) : L.h;
  if (rx1 <= rx0 || ry1 <= ry0) return;
  const lctx = L.canvas.getContext('2d'), data = lctx.createImageData(rx1 - rx0, ry1 - ry0), px = data.data;
  const bits = L.bits, w = L.w, h = L.h;
  for (let y = ry0; y < ry1; y++) {
    for (let x = rx0; x < rx1; x++) {
      if (!bits[y * w + x]) continue;
      const edge = x < t || y < t || x >= w - t || y >= h - t || !bits[y * w + x - t] || !bits[y * w + x + t] ||
        !bits[(y - t) * w + x] || !bits[(y + t) * w + x];
      const o = ((y - ry0) * (rx1 - rx0) + (x - rx0)) * 4;
      if (edge && (!dashed || (((L.x0 + x + L.y0 + y) / (4 * t)) | 0) % 2 === 0)) {
        px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 255;
      } else { px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = fill; }
    }
  }
  lctx.putImageData(data, rx0, ry0);
  L.style = styleKey(inst);
}
// a layer is painted again only when its look changes (not on selection: the selected one is drawn over)
function styleKey(inst) { return [inst.color, inst.state, Math.round(1.2 / Math.max(S.view.s, 0.05))].join('|'); }
function visible() { return S.instances.filter((inst) => inst.state !== 'rejected' && !inst.deleted); }
function draw() {
  const dpr = window.devicePixelRatio || 1, cw = stage.clientWidth, ch = stage.clientHeight;
  if (cv.width !== Math.round(cw * dpr) || cv.height !== Math.round(ch * dpr)) {
    cv.width = Math.round(cw * dpr); cv.height = Math.round(ch * dpr);
  }
  if (S.W && S.fittedFor !== S.imageId && cw > 0) fit();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = '#2b2b2b'; ctx.fillRect(0, 0, cv.width, cv.height);
  if (!S.W) return;
  const v = S.view;
  ctx.setTransform(dpr * v.s, 0, 0, dpr * v.s, dpr * v.tx, dpr * v.ty);
  ctx.imageSmoothingEnabled = true;
  if (S.img && S.img.complete && S.img.naturalWidth) ctx.drawImage(S.img, 0, 0, S.W, S.H);
  ctx.imageSmoothingEnabled = false;
  const lw = 2 / v.s;
  for (const inst of visible()) {
    ctx.globalAlpha = inst.low ? 0.55 : 1;
    if (inst.layer && inst.layer.w) {
      if (inst.layer.style !== styleKey(inst)) paintLayer(inst);
      ctx.drawImage(inst.layer.canvas, inst.layer.x0, inst.layer.y0);
    } else if (inst.box) {  // a box without a mask (box-only, or a drawn box whose mask is on its way)
      ctx.setLineDash(inst.state === 'proposed' || inst.waiting ? [6 / v.s, 4 / v.s] : []);
      ctx.lineWidth = inst.id === S.sel ? 2 * lw : lw; ctx.strokeStyle = inst.color;
      const [x1, y1, x2, y2] = inst.box; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1); ctx.setLineDash([]);
    }
  }
  ctx.globalAlpha = 1;
  const sel = selected();
  if (sel && sel.layer && sel.layer.w && sel.layer.canvas) {  // the selected one: its fill again, a white frame
    ctx.globalAlpha = 0.7; ctx.drawImage(sel.layer.canvas, sel.layer.x0, sel.layer.y0); ctx.globalAlpha = 1;
    ctx.lineWidth = lw; ctx.strokeStyle = '#fff'; ctx.setLineDash([]);
    ctx.strokeRect(sel.layer.x0 - lw, sel.layer.y0 - lw, sel.layer.w + 2 * lw, sel.layer.h + 2 * lw);
  }
  if (sel && sel.box) {  // its class and score above it
    const text = `#${sel.id > 0 ? sel.id : 'new'} ${isolatedText(className(sel.category_id))}${sel.score == null ? '' : ' ' + sel.score.toFixed(2)}`;
    ctx.font = `${13 / v.s}px sans-serif`;
    const tw = ctx.measureText(text).width, x = sel.box[0], y = Math.max(sel.box[1], 16 / v.s);
    ctx.fillStyle = 'rgba(0,0,0,0.7)'; ctx.fillRect(x, y - 15 / v.s, tw + 6 / v.s, 15 / v.s);
    ctx.fillStyle = '#fff'; ctx.fillText(text, x + 3 / v.s, y - 3 / v.s);
  }
  if (S.drag && S.drag.kind === 'box') {
    const [x1, y1, x2, y2] = S.drag.box; ctx.setLineDash([6 / v.s, 4 / v.s]); ctx.lineWidth = lw;
    ctx.strokeStyle = '#fff'; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1); ctx.setLineDash([]);
  }
  if (S.polygon.length) {
    ctx.lineWidth = lw; ctx.strokeStyle = '#ffeb3b'; ctx.beginPath();
    S.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (S.pointer) ctx.lineTo(S.pointer[0], S.pointer[1]);
    ctx.stroke();
    ctx.fillStyle = '#ffeb3b';
    for (const [x, y] of S.polygon) ctx.fillRect(x - 3 / v.s, y - 3 / v.s, 6 / v.s, 6 / v.s);
  }
  if (S.refine.id === S.sel && S.sel != null) {  // the refine clicks on the selected instance
    for (const [points, color] of [[S.refine.positive, '#22c55e'], [S.refine.negative, '#ef4444']]) {
      ctx.fillStyle = color;
      for (const [x, y] of points) { ctx.beginPath(); ctx.arc(x + 0.5, y + 0.5, 4 / v.s, 0, 2 * Math.PI); ctx.fill(); }
    }
  }
  if ((S.tool === 'brush' || S.tool === 'eraser') && S.pointer) {
    ctx.lineWidth = lw; ctx.strokeStyle = S.tool === 'brush' ? '#fff' : '#f44';
    ctx.beginPath(); ctx.arc(S.pointer[0], S.pointer[1], S.radius, 0, 2 * Math.PI); ctx.stroke();
  }
}
function fit() {
  const cw = stage.clientWidth, ch = stage.clientHeight;
  const s = Math.min(cw / S.W, ch / S.H);
  S.view = {s, tx: (cw - S.W * s) / 2, ty: (ch - S.H * s) / 2}; S.fittedFor = S.imageId;
}
function zoomAt(factor, sx, sy) {
  const v = S.view, s = Math.min(32, Math.max(0.05, v.s * factor));
  S.view = {s, tx: sx - (sx - v.tx) * s / v.s, ty: sy - (sy - v.ty) * s / v.s};
}
function toImage(event) {
  const r = cv.getBoundingClientRect(), v = S.view;
  const sx = event.clientX - r.left, sy = event.clientY - r.top;
  return [(sx - v.tx) / v.s, (sy - v.ty) / v.s, sx, sy];
}

// ---- the side panel -------------------------------------------------------------------------------
function className(id) { const c = S.classes.find((k) => k.id === id); return c ? c.name : `class ${id}`; }
function selected() { return S.instances.find((inst) => inst.id === S.sel && !inst.deleted) || null; }
function escapeHtml(text) { return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }
// A class name (user text) inside other text: without its bidi controls (embeddings, overrides, isolates: a stray
// U+2069 would close the isolation early), isolated, so that a right-to-left override in it (U+202E) cannot flip the
// rest of the row; a right-to-left name still reads right to left. HTML: <bdi>; canvas text: U+2068 .. U+2069.
function withoutBidiControls(text) { return String(text).replace(/[\u202a-\u202e\u2066-\u2069]/g, ''); }
function nameHtml(text) { return `<bdi>${escapeHtml(withoutBidiControls(text))}</bdi>`; }
function isolatedText(text) { return `\u2068${withoutBidiControls(text)}\u2069`; }
const shownHtml = new Map();  // what each panel box shows: set again only when it changed (no relayout per key)
function setHtml(box, html) { if (shownHtml.get(box) !== html) { shownHtml.set(box, html); box.innerHTML = html; } }
function panel() {
  setHtml(classBox, S.classes.length
    ? S.classes.map((c, i) => `<button class="wb-class${c.id === S.drawClass ? ' on' : ''}" data-class="${c.id}" tabindex="-1">` +
      `<span class="swatch" style="background:${c.color}"></span>${S.keyOf && S.keyOf[c.id] ? `<b>${S.keyOf[c.id]}</b> ` : ''}${nameHtml(c.name)}</button>`).join('')
    : '<i>No classes yet: add one in the Classes tab (it appears here at once).</i>');
  const rows = order();
  setHtml(listBox, rows.map((inst) => `<div class="wb-row${inst.low ? ' low' : ''}" data-id="${inst.id}">` +
    `<span class="swatch" style="background:${inst.color}"></span>#${inst.id > 0 ? inst.id : 'new'} ${nameHtml(className(inst.category_id))}` +
    `${inst.score == null ? '' : ' · ' + inst.score.toFixed(2)} · ${inst.state === 'accepted' ? '✓' : inst.low ? '? low' : '?'}</div>`).join('') ||
    '<i>No instances: propose (p) or draw (x box, g polygon, b brush).</i>');
  const on = listBox.querySelector('.wb-row.on'), row = listBox.querySelector(`.wb-row[data-id="${S.sel}"]`);
  if (on !== row) {
    if (on) on.classList.remove('on');
    if (row) {  // scroll the list (only it, never the page) to the selected row
      row.classList.add('on');
      if (row.offsetTop < listBox.scrollTop) listBox.scrollTop = row.offsetTop;
      else if (row.offsetTop + row.offsetHeight > listBox.scrollTop + listBox.clientHeight) {
        listBox.scrollTop = row.offsetTop + row.offsetHeight - listBox.clientHeight;
      }
    }
  }
  for (const b of toolBox.querySelectorAll('[data-tool]')) b.classList.toggle('on', b.dataset.tool === S.tool);
  const lost = S.value && S.value.lost ? ` · <a href="#" data-act="recover">recover my lost version</a>` : '';
  const state = S.inflight || S.pending.length ? 'saving…' : (S.value && S.value.status) || 'saved';
  setHtml(statusBox, `<span class="wb-state ${state.replace(/[^a-z]/g, '')}">${state}</span> · revision ${S.rev ?? '-'}${lost}`);
  setHtml(messageBox, [S.localMessage, S.value && S.value.message].filter(Boolean).join('<br>'));
}
function order() {  // the walk order: score order (accepted ones without a score after the proposals)
  return visible().slice().sort((a, b) => (b.score ?? -1) - (a.score ?? -1) || a.id - b.id);
}
function say(text, name) {  // a message; `name` (user text) is put in for {name}, isolated
  S.localMessage = text ? escapeHtml(text).replace('{name}', name == null ? '' : nameHtml(name)) : ''; panel();
}

// ---- local edits (shown at once) and the background save --------------------------------------------
function apply(op) {  // an edit on the local state (also re-applied on top of a newer server state)
  const byId = (id) => S.instances.find((inst) => inst.id === id);
  if (op.kind === 'review') for (const id of op.ids) { const inst = byId(id); if (inst) inst.state = op.state; }
  else if (op.kind === 'keep_box') { const inst = byId(op.id); if (inst) inst.state = 'accepted'; }
  else if (op.kind === 'delete') for (const id of op.ids) { const inst = byId(id); if (inst) inst.deleted = true; }
  else if (op.kind === 'class') { const inst = byId(op.id); if (inst) { inst.category_id = op.category_id; inst.state = 'accepted'; inst.color = classColor(op.category_id); } }
  else if (op.kind === 'accept_all') {
    for (const inst of visible()) if (inst.state === 'proposed' && (op.threshold == null || (inst.score ?? 0) >= op.threshold)) inst.state = 'accepted';
  } else if (op.kind === 'mask') {
    let inst = byId(op.id ?? op.temp_id);
    if (!inst) { inst = {id: op.temp_id, category_id: op.category_id, score: null, color: classColor(op.category_id)}; S.instances.push(inst); }
    Object.assign(inst, {layer: op._layer, state: 'accepted', score: null, low: false, box: op._box});
    inst.layer.style = null;
  } else if (op.kind === 'box') {
    if (!byId(op.temp_id)) S.instances.push({id: op.temp_id, category_id: op.category_id, state: 'accepted', score: null,
      box: op.box, waiting: true, color: classColor(op.category_id)});
  }
}
function classColor(id) { const c = S.classes.find((k) => k.id === id); return c ? c.color : '#ffffff'; }
function edit(op) {  // shown at once; sent after the next frame is painted (the send must not delay the paint)
  apply(op); S.pending.push(op); S.localMessage = ''; draw(); panel();
  requestAnimationFrame(() => setTimeout(flush, 0));
}
// a batch stays within the server's limits (services.editing: MAX_EDITS edits, MAX_BOXES box, refine and
// propose edits); the edits beyond them go in the next batch (app/canvas.py fills these numbers in)
const BATCH_LIMITS = {edits: 500, costly: 20};
const COSTLY_KINDS = ['box', 'refine', 'propose', 'keep_box'];
function flush() {
  if (S.inflight || !S.pending.length || S.imageId == null) return;
  let count = 0, costly = 0;
  while (count < S.pending.length && count < BATCH_LIMITS.edits) {
    const isCostly = COSTLY_KINDS.includes(S.pending[count].kind);
    if (isCostly && costly >= BATCH_LIMITS.costly) break;
    costly += isCostly ? 1 : 0; count += 1;
  }
  S.inflight = {seq: ++S.seq, ops: S.pending.slice(0, count), sentAt: performance.now()};
  S.pending = S.pending.slice(count);
  const ops = S.inflight.ops.map(({_layer, _box, ...sent}) => sent);
  trigger('save', {image_id: S.imageId, revision: S.rev, seq: S.inflight.seq, ops});
  panel();
  clearTimeout(S.saveTimer);
  S.saveTimer = setTimeout(() => { if (S.inflight) say('The server has not answered for 20 s: your edits are still being saved…'); }, 20000);
}
function nextProposed(after) {
  const rows = order().filter((inst) => inst.state === 'proposed');
  if (!rows.length) return null;
  const all = order(), start = all.findIndex((inst) => inst.id === after);
  for (let k = 1; k <= all.length; k++) { const inst = all[(start + k) % all.length]; if (inst.state === 'proposed') return inst.id; }
  return rows[0].id;
}
function review(state) {
  const inst = selected();
  if (!inst) return say('Select an instance first: click it, or Tab through them.');
  if (inst.id < 0) return say('That instance is still being saved; try again in a moment.');
  const op = state === 'deleted' ? {kind: 'delete', ids: [inst.id]} : {kind: 'review', ids: [inst.id], state};
  S.sel = nextProposed(inst.id);
  edit(op);
}
function walk(step) {
  const rows = order();
  if (!rows.length) return;
  const at = rows.findIndex((inst) => inst.id === S.sel);
  S.sel = rows[(at + step + rows.length) % rows.length].id;
  draw(); panel();
}
// Number keys 1-9 stay with their class: a class keeps its number while it exists (kept in this browser), a new
// class takes the smallest free one, so deleting or merging a class renumbers no other class.
const KEYS_STORE = 'wb-class-keys';
function loadKeys() { try { return JSON.parse(window.localStorage.getItem(KEYS_STORE) || '{}') || {}; } catch (e) { return {}; } }
function assignKeys() {
  const stored = loadKeys(), keyOf = {}, used = new Set();
  for (const c of S.classes) {
    const k = stored[c.id];
    if (Number.isInteger(k) && k >= 1 && k <= 9 && !used.has(k)) { keyOf[c.id] = k; used.add(k); }
  }
  for (const c of S.classes) {
    if (keyOf[c.id] != null) continue;
    for (let k = 1; k <= 9; k++) if (!used.has(k)) { keyOf[c.id] = k; used.add(k); break; }
  }
  S.keyOf = keyOf;
  try { window.localStorage.setItem(KEYS_STORE, JSON.stringify(keyOf)); } catch (e) { /* private mode: per page */ }
}
function setClass(key) {
  const c = S.classes.find((k) => S.keyOf && S.keyOf[k.id] === key);
  if (!c) return say(`No class has the key ${key}.`);
  setClassOf(c);
}
function setClassOf(c) {  // the selected instance gets the class (or new instances do)
  const inst = selected();
  if (inst && inst.id > 0) { edit({kind: 'class', id: inst.id, category_id: c.id}); return; }
  S.drawClass = c.id; say('New instances get the class {name}.', c.name);
}
function needClass() {
  if (S.drawClass == null && S.classes.length) S.drawClass = S.classes[0].id;
  if (S.drawClass == null) { say('Add a class first (Classes tab): it appears here at once, then draw.'); return false; }
  return true;
}
function addMask(layer, tool, target) {  // a new or changed mask from the brush, the eraser or a polygon
  if (layerEmpty(layer)) {
    if (target && target.id > 0) { S.sel = null; edit({kind: 'delete', ids: [target.id]}); say('The mask was erased completely: the instance is deleted (undo: z).'); }
    else if (target) { S.instances = S.instances.filter((inst) => inst !== target); draw(); panel(); }
    return;
  }
  const box = layerBox(layer);
  const op = {kind: 'mask', tool, counts: encodeLayer(layer, S.H, S.W), _layer: layer, _box: box};
  if (target && target.id > 0) Object.assign(op, {id: target.id, category_id: target.category_id});
  else Object.assign(op, {temp_id: target ? target.id : S.nextTemp--, category_id: target ? target.category_id : S.drawClass});
  S.sel = op.id ?? op.temp_id;
  edit(op);
}
function layerBox(L) {
  let x0 = L.w, y0 = L.h, x1 = -1, y1 = -1;
  for (let y = 0; y < L.h; y++) for (let x = 0; x < L.w; x++) if (L.bits[y * L.w + x]) {
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  return [L.x0 + x0, L.y0 + y0, L.x0 + x1 + 1, L.y0 + y1 + 1];
}
function cropLayer(L) {  // the tight layer of a mask painted on the whole image
  const [x0, y0, x1, y1] = layerBox(L), w = x1 - x0, h = y1 - y0, bits = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) bits.set(L.bits.subarray((y + y0 - L.y0) * L.w + x0 - L.x0, (y + y0 - L.y0) * L.w + x1 - L.x0), y * w);
  return {x0, y0, w, h, bits};
}
function polygonLayer(points) {
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.max(0, Math.floor(Math.min(...xs))), y0 = Math.max(0, Math.floor(Math.min(...ys)));
  const x1 = Math.min(S.W, Math.ceil(Math.max(...xs)) + 1), y1 = Math.min(S.H, Math.ceil(Math.max(...ys)) + 1);
  const w = Math.max(1, x1 - x0), h = Math.max(1, y1 - y0), off = document.createElement('canvas');
  off.width = w; off.height = h;
  const octx = off.getContext('2d');
  octx.fillStyle = '#000'; octx.beginPath();
  points.forEach(([x, y], i) => (i ? octx.lineTo(x - x0, y - y0) : octx.moveTo(x - x0, y - y0)));
  octx.closePath(); octx.fill();
  const alpha = octx.getImageData(0, 0, w, h).data, bits = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) bits[i] = alpha[i * 4 + 3] >= 128 ? 1 : 0;
  return {x0, y0, w, h, bits};
}
function closePolygon() {
  const points = S.polygon;
  S.polygon = []; S.cut = {clicks: [], segments: [], asked: S.cut.asked + 1};
  if (points.length < 3) { draw(); return say('A polygon needs at least 3 points.'); }
  addMask(polygonLayer(points), 'polygon', null);
}
// ---- intelligent scissors: each segment between two clicks follows the photo's edges (the server's
// services.scissors, called through gr.HTML's server functions); a straight line shows until the path comes
function cutPolygon() {
  const c = S.cut, out = [];
  c.clicks.forEach((point, i) => {
    if (i === 0) { out.push(point); return; }
    const path = c.segments[i - 1];
    if (path) out.push(...path.slice(1)); else out.push(point);
  });
  return out;
}
function snap(index, from, to, then) {  // segments[index] := the edge path from -> to
  const imageId = S.imageId, asked = S.cut.asked;
  if (typeof server === 'undefined' || !server || !server.scissors_path) {
    S.cut.segments[index] = [from, to]; say('The scissors need the server; the segment stays straight.');
    if (then) then();
    return;
  }
  server.scissors_path(imageId, [from, to]).then((answer) => {
    if (S.imageId !== imageId || S.cut.asked !== asked || !answer || !answer.path) return;  // stale
    S.cut.segments[index] = answer.path;
    S.polygon = cutPolygon(); draw();
    if (then) then();
  }).catch((error) => {  // the straight segment stands in
    if (S.imageId === imageId && S.cut.asked === asked) { S.cut.segments[index] = [from, to]; S.polygon = cutPolygon(); draw(); }
    say(`Scissors: ${error && error.message ? error.message : error}`);
    if (then) then();
  });
}
function cutClick(x, y) {
  const c = S.cut, point = [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  c.clicks.push(point);
  if (c.clicks.length > 1) { c.segments.push(null); snap(c.segments.length - 1, c.clicks[c.clicks.length - 2], point); }
  S.polygon = cutPolygon(); draw();
}
function closeCut() {
  const c = S.cut;
  if (c.clicks.length < 3) return say('The scissors need at least 3 clicks.');
  const index = c.segments.length;
  c.segments.push(null);
  say('Closing along the edges…');
  snap(index, c.clicks[c.clicks.length - 1], c.clicks[0], closeCut2);
}
function closeCut2() {
  const c = S.cut;
  if (c.segments.some((path) => !path)) return setTimeout(() => { if (S.cut === c) closeCut2(); }, 100);  // on its way
  const ring = cutPolygon();
  const last = c.segments[c.segments.length - 1];
  S.polygon = ring.concat(last.slice(1, -1));
  closePolygon();
}
function paint(x, y, on) {  // a disk of the brush (on) or the eraser (off) on the stroke's layer
  const L = S.drag.layer, r = S.radius;
  const x0 = Math.max(0, Math.floor(x - r)), x1 = Math.min(S.W, Math.ceil(x + r) + 1);
  const y0 = Math.max(0, Math.floor(y - r)), y1 = Math.min(S.H, Math.ceil(y + r) + 1);
  for (let py = y0; py < y1; py++) for (let px = x0; px < x1; px++) {
    if ((px + 0.5 - x) ** 2 + (py + 0.5 - y) ** 2 <= r * r) L.bits[py * L.w + px] = on ? 1 : 0;
  }
  paintLayer(S.drag.inst, [x0, y0, x1, y1]);
}
function refineClick(x, y, positive) {  // this is the object (left) / this is not (right): GrabCut on the server
  const inst = selected();
  if (!inst || inst.id < 0) return say('Select a saved instance first, then click on it: left = object, right = not.');
  if (S.refine.id !== inst.id) S.refine = {id: inst.id, positive: [], negative: []};
  (positive ? S.refine.positive : S.refine.negative).push([Math.round(x), Math.round(y)]);
  edit({kind: 'refine', id: inst.id, positive: S.refine.positive.slice(), negative: S.refine.negative.slice()});
  draw();
}
function strokeTo(x, y) {  // disks along the segment from the last point, so fast strokes have no gaps
  const [lx, ly] = S.drag.last, steps = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / Math.max(1, S.radius / 2)));
  for (let k = 1; k <= steps; k++) paint(lx + (x - lx) * k / steps, ly + (y - ly) * k / steps, S.tool === 'brush');
  S.drag.last = [x, y];
}

// ---- active time: the times of a person's inputs, sent when the image is left (services' record_visit) ----
function note() {
  const t = performance.now() / 1000, times = S.visit.times;
  if (S.visit.imageId != null && (!times.length || t - times[times.length - 1] >= 1)) times.push(t);
}
function endVisit(done) {
  const v = S.visit;
  if (v.imageId != null && v.times.length >= 2) trigger('visit', {image_id: v.imageId, times: v.times, done});
  S.visit = {imageId: null, times: []};
}
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState !== 'hidden' || S.visit.imageId == null) return;
  const id = S.visit.imageId;
  endVisit(false); S.visit = {imageId: id, times: []};
});

// ---- the server's state -----------------------------------------------------------------------------
function sync() {
  const value = props.value, started = performance.now();
  if (!value || typeof value !== 'object') return;
  S.value = value;
  if (value.image_id !== S.imageId) {  // another image: the edits of the last one were all answered
    endVisit(false);
    S.visit = {imageId: value.image_id ?? null, times: [performance.now() / 1000]};
    S.refine = {id: null, positive: [], negative: []};
    S.imageId = value.image_id; S.sel = null; S.polygon = []; S.cut = {clicks: [], segments: [], asked: S.cut.asked + 1}; S.drag = null; S.layers = new Map();
    S.pending = []; S.inflight = null; S.fittedFor = null; S.localMessage = '';
    if (value.image_id != null) {  // a link per image: a reload (or the link sent to someone) opens it again
      const url = new URL(window.location.href);
      url.searchParams.set('image', String(value.image_id));
      window.history.replaceState(window.history.state, '', url);
    }
  }
  if (S.inflight && value.ack === S.inflight.seq) {
    S.perf.roundTrips.push(performance.now() - S.inflight.sentAt); S.inflight = null; clearTimeout(S.saveTimer);
    if (value.status === 'conflict' && S.pending.length) {  // later edits were made on the version that lost
      S.pending = [];
      S.localMessage = 'Your edits after the conflict were not sent: they were made on the version that lost.';
    }
  }
  const created = value.created || {};
  for (const op of S.pending) {
    if (op.temp_id != null && created[op.temp_id] != null) { op.id = created[op.temp_id]; delete op.temp_id; }
    if (op.id != null && created[op.id] != null) op.id = created[op.id];
  }
  if (S.sel != null && created[S.sel] != null) S.sel = created[S.sel];
  S.rev = value.revision; S.W = value.width || 0; S.H = value.height || 0; S.threshold = value.threshold === undefined ? 0.5 : value.threshold;  // null: the model's thresholds
  S.classes = value.classes || [];
  assignKeys();
  if (S.drawClass != null && !S.classes.some((c) => c.id === S.drawClass)) S.drawClass = null;
  if (value.image_url && value.image_url !== S.imgUrl) {
    S.imgUrl = value.image_url; S.img = new Image(); S.perf.imageDrawnAt = null;
    S.img.onload = () => { draw(); S.perf.imageDrawnAt = performance.now(); }; S.img.src = value.image_url;
  } else if (!value.image_url) { S.img = null; S.imgUrl = null; }
  const layers = new Map();
  S.instances = (value.instances || []).map((raw) => {
    let layer = null;
    if (raw.counts) {
      const cached = S.layers.get(raw.id);
      layer = cached && cached.counts === raw.counts ? cached : Object.assign(decodeLayer(raw.counts, S.H, S.W), {counts: raw.counts});
      layers.set(raw.id, layer);
    }
    return {...raw, layer};
  });
  S.layers = layers;
  for (const op of S.inflight ? [...S.inflight.ops, ...S.pending] : S.pending) apply(op);
  if (S.sel != null && !selected()) S.sel = null;
  draw(); panel();
  S.perf.syncs.push({at: started, ms: performance.now() - started, instances: S.instances.length});
  flush();
  if (S.doneAsked && !S.inflight && !S.pending.length) { S.doneAsked = false; trigger('done', {image_id: S.imageId, revision: S.rev}); }
}
watch('value', sync);

// ---- input --------------------------------------------------------------------------------------------
function act(name) {
  if (name === 'accept') review('accepted');
  else if (name === 'reject') review('rejected');
  else if (name === 'delete') review('deleted');
  else if (name === 'keep_box') {  // the proposal's box is kept, its mask made again from the box (server side)
    const inst = selected();
    if (!inst || inst.state !== 'proposed') return say('Select a proposal first: k keeps its box and makes its mask again.');
    if (inst.id < 0) return say('That instance is still being saved; try again in a moment.');
    S.sel = inst.id; edit({kind: 'keep_box', id: inst.id}); say('Keeping the box: its mask is made again…');
  } else if (name === 'accept_all') {
    const n = visible().filter((inst) => inst.state === 'proposed' && (S.threshold == null || (inst.score ?? 0) >= S.threshold)).length;
    if (!n) return say(S.threshold == null ? 'No proposal is shown to accept.' : `No proposal scores at least ${S.threshold.toFixed(2)} (the review threshold).`);
    edit({kind: 'accept_all', threshold: S.threshold});
  } else if (name === 'undo') edit({kind: 'undo'});
  else if (name === 'propose') { say('Proposing…'); edit({kind: 'propose'}); }
  else if (name === 'recover') edit({kind: 'recover'});
  else if (name === 'done') {
    if (S.imageId == null) return;
    note(); endVisit(true);
    say('Done: the proposals left are rejected; the next image opens…');
    if (S.inflight || S.pending.length) S.doneAsked = true; else trigger('done', {image_id: S.imageId, revision: S.rev});
  } else if (name === 'fit') { fit(); draw(); }
  else if (name === 'next' || name === 'prev') { const b = document.getElementById(name === 'next' ? 'next-image' : 'prev-image'); if (b) b.click(); }
}
function setTool(tool) {
  if (S.polygon.length && tool !== S.tool) { S.polygon = []; S.cut = {clicks: [], segments: [], asked: S.cut.asked + 1}; }
  S.tool = tool; cv.style.cursor = tool === 'select' ? 'default' : 'crosshair'; draw(); panel();
}
const KEYS = {a: 'accept', r: 'reject', d: 'delete', Delete: 'delete', A: 'accept_all', z: 'undo', p: 'propose', k: 'keep_box',
  n: 'done', Enter: 'done', 0: 'fit', f: 'fit', ArrowRight: 'next', ArrowLeft: 'prev'};
const TOOLS = {v: 'select', x: 'box', g: 'polygon', i: 'scissors', b: 'brush', e: 'eraser', c: 'refine'};
root.addEventListener('keydown', (event) => {
  if (event.target.closest('input, textarea, select')) return;
  note();
  const key = event.key;
  if (event.altKey || event.metaKey) return;
  if (event.ctrlKey) { if (key === 'z') { act('undo'); event.preventDefault(); } return; }
  if (key === ' ') { S.space = true; cv.style.cursor = 'grab'; event.preventDefault(); return; }
  if (key === 'Tab') { walk(event.shiftKey ? -1 : 1); event.preventDefault(); return; }
  if (key === 'Escape') { if (S.polygon.length) { S.polygon = []; S.cut = {clicks: [], segments: [], asked: S.cut.asked + 1}; } else S.sel = null; say(''); draw(); event.preventDefault(); return; }
  if (S.polygon.length && S.tool === 'scissors' && (key === 'Enter' || key === 'Backspace')) {
    if (key === 'Enter') closeCut();
    else { S.cut.clicks.pop(); S.cut.segments.length = Math.max(0, S.cut.clicks.length - 1); S.cut.asked++; S.polygon = cutPolygon(); draw(); }
    event.preventDefault(); return;
  }
  if (S.polygon.length && (key === 'Enter' || key === 'Backspace')) {
    if (key === 'Enter') closePolygon(); else { S.polygon.pop(); draw(); }
    event.preventDefault(); return;
  }
  if (key === '[' || key === ']') {
    S.radius = Math.max(1, Math.min(200, Math.round(S.radius * (key === ']' ? 1.25 : 0.8))));
    say(`Brush radius ${S.radius} px.`); draw(); event.preventDefault(); return;
  }
  if (key === '+' || key === '=' || key === '-') { zoomAt(key === '-' ? 1 / 1.25 : 1.25, stage.clientWidth / 2, stage.clientHeight / 2); draw(); event.preventDefault(); return; }
  if (/^[1-9]$/.test(key)) { setClass(Number(key)); event.preventDefault(); return; }
  if (TOOLS[key]) { setTool(TOOLS[key]); event.preventDefault(); return; }
  if (KEYS[key] !== undefined) { act(KEYS[key]); event.preventDefault(); }
});
root.addEventListener('keyup', (event) => { if (event.key === ' ') { S.space = false; setTool(S.tool); } });
root.addEventListener('mousedown', (event) => {  // the panel's buttons keep the keyboard on the canvas
  if (event.target.closest('button, .wb-row, a')) event.preventDefault();
});
root.addEventListener('click', (event) => {
  const target = event.target.closest('[data-act], [data-tool], [data-class], .wb-row');
  if (!target) return;
  event.preventDefault();
  if (target.dataset.act) act(target.dataset.act);
  else if (target.dataset.tool) setTool(target.dataset.tool);
  else if (target.dataset.class) {
    const c = S.classes.find((k) => k.id === Number(target.dataset.class));
    if (c) setClassOf(c);
  } else { S.sel = Number(target.dataset.id); draw(); panel(); }
  cv.focus({preventScroll: true});
});
cv.addEventListener('contextmenu', (event) => event.preventDefault());
// The page around the canvas (keyboard traps): a control clicked with the mouse (a button, a tick box, the slider,
// a gallery photo) hands the keyboard back to the canvas, so that Tab walks the instances and the review keys
// work at once; keyboard users who Tab to a control and press it keep their focus (their clicks have detail 0).
// A number box takes only what can make a number: a review key typed into one (a, r, d...) is not a value.
if (!window.__wbPageKeys) {
  window.__wbPageKeys = true;
  document.addEventListener('click', (event) => {
    const view = document.querySelector('#review-canvas canvas.wb-view');
    const state = window.__wbCanvas;
    if (!view || !state || state.imageId == null || event.detail === 0 || view.closest('.wb-canvas').contains(event.target)) return;
    if (!event.target.closest('button, input[type=checkbox], input[type=radio], input[type=range], label, #gallery')) return;
    if (event.target.closest('input[type=number], input[type=text], textarea, select, [role=listbox]')) return;
    setTimeout(() => { if (view.offsetParent) view.focus({preventScroll: true}); }, 0);
  }, true);
  document.addEventListener('keydown', (event) => {
    const box = event.target.closest && event.target.closest('input[type=number]');
    if (!box || event.ctrlKey || event.metaKey || event.altKey || event.key.length !== 1) return;
    if (!/[0-9.,-]/.test(event.key)) event.preventDefault();
  }, true);
}
cv.addEventListener('wheel', (event) => {
  event.preventDefault();
  const [, , sx, sy] = toImage(event);
  zoomAt(Math.exp(-event.deltaY * 0.0015), sx, sy); draw();
}, {passive: false});
cv.addEventListener('pointerdown', (event) => {
  cv.focus({preventScroll: true});
  note();
  if (!S.W) return;
  const [x, y, sx, sy] = toImage(event);
  cv.setPointerCapture(event.pointerId);
  if (event.button === 1 || S.space) {
    S.drag = {kind: 'pan', sx, sy, tx: S.view.tx, ty: S.view.ty}; event.preventDefault(); return;
  }
  if (S.tool === 'refine' && (event.button === 0 || event.button === 2)) { refineClick(x, y, event.button === 0); return; }
  if (event.button !== 0) return;
  if (S.tool === 'select') {
    S.drag = {kind: 'click', sx, sy, tx: S.view.tx, ty: S.view.ty, x, y};
  } else if (S.tool === 'box') {
    if (!needClass()) return;
    S.drag = {kind: 'box', x, y, box: [x, y, x, y]};
  } else if (S.tool === 'scissors') {
    if (!needClass()) return;
    const first = S.cut.clicks[0];
    if (S.cut.clicks.length >= 3 && Math.hypot((first[0] - x) * S.view.s, (first[1] - y) * S.view.s) <= 8) closeCut();
    else cutClick(x, y);
  } else if (S.tool === 'polygon') {
    if (!needClass()) return;
    const first = S.polygon[0];
    if (S.polygon.length >= 3 && Math.hypot((first[0] - x) * S.view.s, (first[1] - y) * S.view.s) <= 8) closePolygon();
    else { S.polygon.push([x, y]); draw(); }
  } else {  // brush / eraser: on the selected mask; the brush without one paints a new instance
    let inst = selected();
    if (!inst && S.tool === 'eraser') return say('Select the instance to erase from first.');
    if (!inst) {
      if (!needClass()) return;
      inst = {id: S.nextTemp--, category_id: S.drawClass, state: 'accepted', score: null, color: classColor(S.drawClass)};
      S.instances.push(inst); S.sel = inst.id;
    }
    inst.layer = fullLayer(inst.layer, S.H, S.W); inst.layer.canvas = null; inst.layer.style = null;
    paintLayer(inst);
    S.drag = {kind: 'paint', inst, layer: inst.layer, last: [x, y]};
    paint(x, y, S.tool === 'brush'); draw();
  }
});
cv.addEventListener('pointermove', (event) => {
  const [x, y, sx, sy] = toImage(event);
  S.pointer = [x, y];
  const d = S.drag;
  if (d && (d.kind === 'pan' || (d.kind === 'click' && Math.hypot(sx - d.sx, sy - d.sy) > 4))) {
    d.kind = 'pan'; S.view.tx = d.tx + sx - d.sx; S.view.ty = d.ty + sy - d.sy;
  } else if (d && d.kind === 'box') d.box = [Math.min(d.x, x), Math.min(d.y, y), Math.max(d.x, x), Math.max(d.y, y)];
  else if (d && d.kind === 'paint') strokeTo(x, y);
  else if (!(S.polygon.length || S.tool === 'brush' || S.tool === 'eraser')) return;
  draw();
});
cv.addEventListener('pointerleave', () => { S.pointer = null; if (!S.drag) draw(); });
cv.addEventListener('pointerup', (event) => {
  const d = S.drag;
  S.drag = null;
  if (!d) return;
  if (d.kind === 'click') {  // the topmost instance with this pixel (the last drawn), else its box
    const shown = visible();
    let hit = null;
    for (let i = shown.length - 1; i >= 0 && !hit; i--) if (layerHas(shown[i].layer, d.x, d.y)) hit = shown[i];
    for (let i = shown.length - 1; i >= 0 && !hit; i--) {
      const b = shown[i].box;
      if (!shown[i].layer && b && d.x >= b[0] && d.x <= b[2] && d.y >= b[1] && d.y <= b[3]) hit = shown[i];
    }
    S.sel = hit ? hit.id : null;
  } else if (d.kind === 'box') {
    const [x1, y1, x2, y2] = d.box.map((v, i) => Math.max(0, Math.min(i % 2 ? S.H : S.W, v)));
    if (x2 - x1 >= 3 && y2 - y1 >= 3) {
      const temp = S.nextTemp--;
      S.sel = temp;
      edit({kind: 'box', temp_id: temp, box: [x1, y1, x2, y2], category_id: S.drawClass});
      say('Box added: its mask comes from the model (GrabCut before there is one)…');
    }
  } else if (d.kind === 'paint') {
    const layer = layerEmpty(d.layer) ? d.layer : cropLayer(d.layer);
    addMask(layer, S.tool, d.inst);
  }
  draw(); panel();
});
new ResizeObserver(() => draw()).observe(stage);
window.__wbRle = {rleCounts, rleString, decodeLayer, encodeLayer};  // for the browser tests
sync();
