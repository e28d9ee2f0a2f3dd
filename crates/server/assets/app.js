// tokenwise playground: a static page, no build step, no dependencies.
// Talks to the server's OpenAI-compatible API (/v1/completions, /v1/chat/completions),
// /tokenwise/info and /metrics; colours every streamed token by entropy or surprisal.
'use strict';

const LN2 = Math.LN2;
const $ = (id) => document.getElementById(id);
const FALLBACK_INFO = {
  model: null, n_ctx: null,
  samplers: ['greedy', 'default', 'min_p', 'typical', 'mirostat', 'top_k', 'dynatemp'],
  kv_policies: ['full', 'window', 'h2o', 'tova', 'snapkv', 'a2sf', 'keyformer', 'knorm'],
  kv_dtypes: ['f16', 'int8', 'int4', 'mixed'], speculative: ['none', 'lookup', 'recycle', 'ngram-adaptive'],
};
const SCALES = { entropy: [2, 4, 6, 8, 12], surprisal: [4, 6, 10, 15, 20] };
const STORE_KEY = 'tokenwise.playground.v1';

const S = {
  info: null,
  mode: 'completion',
  colorBy: 'entropy',
  scaleMax: { entropy: 6, surprisal: 10 },
  toks: [],          // every token record ever shown; span.dataset.t indexes into it
  runs: [],          // completion runs
  chat: [],          // {role, content}
  current: null,     // run being streamed
  ctrl: null,        // AbortController of the running request
  metricsOk: true,
  metricsTimer: null,
  pinned: null,      // index of the token whose tooltip is pinned
  sel: null,         // index of the keyboard-selected token
  defaults: {},
};

// ---------- formatting ----------
const fmt = {
  num(x, d = 1) { return x == null || !isFinite(x) ? '–' : x.toFixed(d); },
  pct(p) {
    if (!isFinite(p)) return '–';
    const v = p * 100;
    return v >= 99.95 ? '100%' : v >= 10 ? v.toFixed(1) + '%' : v >= 0.1 ? v.toFixed(2) + '%' : v > 0 ? v.toExponential(1) + '%' : '0%';
  },
  bytes(b) {
    if (b == null || !isFinite(b)) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(b < 10 ? 2 : 1) : String(Math.round(b))) + ' ' + u[i];
  },
  ms(t) { return t == null ? '–' : t < 1000 ? Math.round(t) + ' ms' : (t / 1000).toFixed(2) + ' s'; },
  // A token's text made visible: spaces, newlines, tabs and control characters shown.
  tok(s) {
    return s.replace(/ /g, '␣').replace(/\n/g, '↵').replace(/\t/g, '⇥').replace(/\r/g, '␍')
      .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, (c) => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0'));
  },
};
const hex = (bytes) => bytes.map((b) => b.toString(16).padStart(2, '0')).join(' ');
const strictDec = new TextDecoder('utf-8', { fatal: true });
function altText(a) {
  if (Array.isArray(a.bytes) && a.bytes.length) {
    try { return fmt.tok(strictDec.decode(new Uint8Array(a.bytes))); } catch (_) { return '‹' + hex(a.bytes) + '›'; }
  }
  return fmt.tok(a.token ?? '');
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// ---------- colour scale ----------
function metric(rec, by = S.colorBy) {
  if (by === 'surprisal') return rec.logprob == null ? null : -rec.logprob / LN2;
  return rec.entropyBits;
}
function colour(v, max, alpha = true) {
  if (v == null || !isFinite(v)) return '';
  const t = Math.max(0, Math.min(1, v / max));
  const h = (222 + 168 * t) % 360;                  // plasma-like: blue → violet → magenta → orange
  const a = alpha ? (0.1 + 0.66 * t).toFixed(3) : 1;
  return `hsla(${h.toFixed(1)}, ${80 + 10 * t}%, ${(58 - 4 * t).toFixed(1)}%, ${a})`;
}
function paint(span) {
  const rec = S.toks[+span.dataset.t];
  if (!rec || rec.plain) return;
  span.style.backgroundColor = colour(metric(rec), S.scaleMax[S.colorBy]) || 'transparent';
}
function updateLegend() {
  const max = S.scaleMax[S.colorBy];
  const stops = [];
  for (let i = 0; i <= 10; i++) stops.push(colour(max * i / 10, max) + ` ${i * 10}%`);
  $('legend-bar').style.background = `linear-gradient(90deg, ${stops.join(', ')})`;
  $('legend-hi').textContent = `${max}+ bits`;
  $('legend').title = `${S.colorBy === 'entropy' ? 'Entropy of the next-token distribution' : 'Surprisal −log₂ p of the chosen token'}, 0 … ${max} bits (click the scale to change its range)`;
}
function repaintAll() {
  updateLegend();
  document.querySelectorAll('#transcript span.tok').forEach(paint);
  for (const r of allRuns()) drawSpark(r);
}

// ---------- settings ----------
const TW_FIELDS = ['sampler_preset', 'top_k', 'min_p', 'typical_p', 'mirostat', 'mirostat_tau', 'mirostat_eta', 'kv_policy', 'kv_budget', 'kv_dtype', 'speculative'];
const PERSIST = ['temperature', 'top_p', 'max_tokens', 'seed', 'top_logprobs', 'system', ...TW_FIELDS];

function fillSelect(id, items) {
  const sel = $(id);
  const keep = sel.value;
  sel.innerHTML = '<option value="">(unset)</option>' + (items || []).map((x) => `<option value="${esc(x)}">${esc(x)}</option>`).join('');
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}
function readNum(id, int) {
  const v = $(id).value.trim();
  if (v === '') return undefined;
  const x = int ? parseInt(v, 10) : parseFloat(v);
  return isFinite(x) ? x : undefined;
}
function requestBody(extra) {
  const b = { ...(S.info?.model ? { model: S.info.model } : {}), ...extra, stream: true, stream_options: { include_usage: true } };
  const set = (k, v) => { if (v !== undefined) b[k] = v; };
  set('max_tokens', readNum('max_tokens', true));
  set('temperature', readNum('temperature'));
  set('top_p', readNum('top_p'));
  set('seed', readNum('seed', true));
  const n = readNum('top_logprobs', true);
  b.logprobs = true;
  b.top_logprobs = Math.max(0, Math.min(20, n ?? 5));
  const tw = {};
  for (const id of TW_FIELDS) {
    const el = $(id);
    const kind = el.dataset.tw;
    if (el.value.trim() === '') continue;
    if (kind === 'int' || kind === 'float') {
      const x = readNum(id, kind === 'int');
      if (x !== undefined) tw[id] = x;
    } else tw[id] = el.value;
  }
  if (Object.keys(tw).length) b.tokenwise = tw;
  return b;
}
function settingsSummary(body) {
  const tw = body.tokenwise || {};
  const parts = [];
  parts.push('preset ' + (tw.sampler_preset || '(unset)'));
  if (body.temperature !== undefined) parts.push('T ' + body.temperature);
  if (body.top_p !== undefined) parts.push('top_p ' + body.top_p);
  for (const k of ['top_k', 'min_p', 'typical_p', 'mirostat', 'mirostat_tau', 'mirostat_eta']) if (tw[k] !== undefined) parts.push(k + ' ' + tw[k]);
  if (body.seed !== undefined) parts.push('seed ' + body.seed);
  if (tw.kv_policy || tw.kv_budget) parts.push('kv ' + (tw.kv_policy || 'default') + (tw.kv_budget ? '/' + tw.kv_budget : ''));
  if (tw.kv_dtype) parts.push('kv ' + tw.kv_dtype);
  if (tw.speculative) parts.push('spec ' + tw.speculative);
  return parts;
}
function saveSettings() {
  const o = { mode: S.mode, colorBy: S.colorBy, scaleMax: S.scaleMax, ws: $('show-ws').checked, prompt: $('prompt').value, theme: document.documentElement.dataset.theme || '' };
  for (const id of PERSIST) o[id] = $(id).value;
  try { localStorage.setItem(STORE_KEY, JSON.stringify(o)); } catch (_) { /* private mode */ }
}
function loadSettings() {
  let o = null;
  try { o = JSON.parse(localStorage.getItem(STORE_KEY) || 'null'); } catch (_) { o = null; }
  if (!o) return;
  for (const id of PERSIST) if (typeof o[id] === 'string') {
    const el = $(id);
    if (el.tagName === 'SELECT' && ![...el.options].some((x) => x.value === o[id])) continue;
    el.value = o[id];
  }
  if (o.scaleMax) Object.assign(S.scaleMax, o.scaleMax);
  if (o.colorBy) setRadio('colorby', (S.colorBy = o.colorBy === 'surprisal' ? 'surprisal' : 'entropy'));
  if (o.mode) setMode(o.mode === 'chat' ? 'chat' : 'completion', false);
  $('show-ws').checked = !!o.ws;
  if (typeof o.prompt === 'string' && S.mode === 'completion') $('prompt').value = o.prompt;
  if (o.theme) setTheme(o.theme);
}
function setRadio(name, v) { document.querySelectorAll(`input[name=${name}]`).forEach((r) => { r.checked = r.value === v; }); }
function syncSettingsUI() {
  const miro = $('mirostat').value;
  const on = (miro !== '' && miro !== '0') || $('sampler_preset').value === 'mirostat';
  document.querySelectorAll('.field.miro').forEach((f) => f.classList.toggle('inactive', !on));
  $('transcript').classList.toggle('show-ws', $('show-ws').checked);
}

// ---------- theme ----------
function setTheme(t) {
  const root = document.documentElement;
  if (t === 'dark' || t === 'light') root.dataset.theme = t; else delete root.dataset.theme;
  $('theme-toggle').title = 'Theme: ' + (root.dataset.theme || 'auto (system)');
  $('theme-toggle').textContent = { dark: '☾', light: '☀' }[root.dataset.theme] || '◐';
}

// ---------- server info & metrics ----------
async function loadInfo() {
  $('server-dot').className = 'dot';
  try {
    const r = await fetch('/tokenwise/info', { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(await errorMessage(r));
    const info = await r.json();
    applyInfo(info, true);
  } catch (e) {
    applyInfo(S.info && S.info.model ? S.info : FALLBACK_INFO, false);
    $('model-name').textContent = 'server unreachable';
    $('server-badge').title = 'GET /tokenwise/info failed: ' + e.message + ' (retrying)';
    clearTimeout(loadInfo.t);
    loadInfo.t = setTimeout(loadInfo, 5000);
  }
}
function applyInfo(info, ok) {
  S.info = info;
  fillSelect('sampler_preset', info.samplers);
  fillSelect('kv_policy', info.kv_policies);
  fillSelect('kv_dtype', info.kv_dtypes);
  fillSelect('speculative', info.speculative);
  if (!applyInfo.loaded) { applyInfo.loaded = true; captureDefaults(); loadSettings(); syncSettingsUI(); }
  $('server-dot').className = 'dot ' + (ok ? 'ok' : 'bad');
  if (ok) {
    $('model-name').textContent = info.model || 'unknown model';
    $('model-ctx').textContent = info.n_ctx ? `ctx ${info.n_ctx}` : '';
    $('server-badge').title = 'Model served by this tokenwise server';
  }
  if (!S.current) document.body.dataset.state = ok ? 'ready' : 'offline';
}
function captureDefaults() { for (const id of PERSIST) S.defaults[id] = $(id).value; }

async function pollMetrics() {
  if (!S.metricsOk) return;
  try {
    const r = await fetch('/metrics', { cache: 'no-store' });
    if (!r.ok) { if (r.status === 404) S.metricsOk = false; return; }
    const text = await r.text();
    const m = /^tokenwise_kv_bytes(?:\{[^}]*\})?\s+([0-9.eE+-]+)/m.exec(text);
    if (m) {
      const kv = parseFloat(m[1]);
      if (S.current && nTok(S.current)) S.current.kvMetric = kv;
      $('m-kv').textContent = fmt.bytes(kv);
      $('m-kv').parentElement.title = 'KV cache bytes held by the server (GET /metrics)';
    }
  } catch (_) { /* server busy or gone; try again next tick */ }
}

// ---------- runs & token rendering ----------
function allRuns() { return [...S.runs, ...document.querySelectorAll('#view-chat .msg.assistant')].map((x) => x.run || x); }

function newRun(container, body, kind, promptText) {
  const el = document.createElement(kind === 'chat' ? 'div' : 'article');
  const run = {
    el, kind, body, tokens: [], content: '', decoder: new TextDecoder('utf-8'),
    t0: performance.now(), tFirst: null, tLast: null, hasLogprobs: false,
    finish: null, usage: null, tw: null, kvMetric: null, error: null, aborted: false,
  };
  if (kind === 'chat') {
    el.className = 'msg assistant streaming';
    el.innerHTML = '<div class="role">assistant</div><div class="bubble"><div class="tokens"></div><canvas class="spark" height="28"></canvas><footer class="run-foot"></footer></div>';
  } else {
    el.className = 'run streaming';
    const n = S.runs.length + 1;
    el.innerHTML = `<header class="run-head"><span class="run-n">#${n}</span><span class="chips">${settingsSummary(body).map((p) => `<span class="chip">${esc(p)}</span>`).join('')}</span><span class="spacer"></span>
      <button type="button" class="ghost tiny cont" title="Put prompt + completion back into the prompt box">↳ continue</button>
      <button type="button" class="ghost tiny copy" title="Copy completion">copy</button></header>
      <div class="tokens"><span class="prompt-text"></span></div><canvas class="spark" height="28"></canvas><footer class="run-foot"></footer>`;
    el.querySelector('.prompt-text').textContent = promptText;
    el.querySelector('.cont').onclick = () => { $('prompt').value = promptText + run.content; $('prompt').focus(); };
    el.querySelector('.copy').onclick = (ev) => {
      navigator.clipboard?.writeText(run.content).then(() => { ev.target.textContent = 'copied'; setTimeout(() => { ev.target.textContent = 'copy'; }, 1200); }, () => {});
    };
  }
  el.run = run;
  run.out = el.querySelector('.tokens');
  run.spark = el.querySelector('canvas.spark');
  run.foot = el.querySelector('.run-foot');
  run.caret = document.createElement('span');
  run.caret.className = 'caret';
  run.out.appendChild(run.caret);
  container.appendChild(el);
  bindSpark(run);
  return run;
}

function renderText(span, text) {
  // Keep the real characters (copy/paste stays exact); markers for whitespace are CSS pseudo-elements.
  const parts = text.split(/(\n|\t| +)/);
  for (const p of parts) {
    if (!p) continue;
    if (p === '\n') {
      const m = document.createElement('span'); m.className = 'nl'; span.appendChild(m);
      span.appendChild(document.createTextNode('\n'));
    } else if (p === '\t' || p[0] === ' ') {
      const m = document.createElement('span'); m.className = p === '\t' ? 'ws tab' : 'ws'; m.textContent = p; span.appendChild(m);
    } else span.appendChild(document.createTextNode(p));
  }
}

function entropyBits(e) {
  if (typeof e.entropy === 'number' && isFinite(e.entropy)) return { v: e.entropy / LN2, approx: false };
  const top = e.top_logprobs;
  if (!Array.isArray(top) || !top.length) return { v: null, approx: false };
  // Lower bound from the visible alternatives only.
  let h = 0;
  for (const a of top) if (isFinite(a.logprob)) h -= Math.exp(a.logprob) * a.logprob;
  return { v: h / LN2, approx: true };
}

function addToken(run, e, now) {
  let text;
  const hasBytes = Array.isArray(e.bytes);
  if (hasBytes) text = run.decoder.decode(new Uint8Array(e.bytes), { stream: true });
  else text = e.token ?? '';
  const eb = entropyBits(e);
  const rec = {
    text, token: e.token ?? '', bytes: hasBytes ? e.bytes : null,
    logprob: typeof e.logprob === 'number' ? e.logprob : null,
    entropy: typeof e.entropy === 'number' ? e.entropy : null,
    entropyBits: eb.v, entropyApprox: eb.approx,
    top: Array.isArray(e.top_logprobs) ? e.top_logprobs : [], run,
    rank: Number.isInteger(e.rank) ? e.rank : null, id: Number.isInteger(e.id) ? e.id : null, i: run.tokens.length, t: now - run.t0,
  };
  const idx = S.toks.push(rec) - 1;
  run.tokens.push(idx);
  const span = document.createElement('span');
  span.className = 'tok';
  span.dataset.t = idx;
  if (text === '') {
    span.classList.add('partial');
    span.dataset.label = hasBytes && e.bytes.length ? hex(e.bytes) : (rec.token || '∅');
  } else renderText(span, text);
  paint(span);
  run.out.insertBefore(span, run.caret);
}

function addPlain(run, text) {
  const idx = S.toks.push({ plain: true, text, run }) - 1;
  const span = document.createElement('span');
  span.className = 'plain';
  span.dataset.t = idx;
  renderText(span, text);
  run.out.insertBefore(span, run.caret);
}

function handleChunk(run, obj) {
  if (obj.error) throw new ApiError(obj.error.message || JSON.stringify(obj.error), obj.error.type);
  const now = performance.now();
  const ch = (obj.choices && obj.choices[0]) || {};
  const text = ch.delta?.content ?? ch.text ?? ch.message?.content ?? '';
  if (typeof text === 'string') run.content += text;
  const lp = ch.logprobs?.content;
  if (Array.isArray(lp) && lp.length) {
    run.hasLogprobs = true;
    if (run.tFirst == null) run.tFirst = now;
    run.tLast = now;
    for (const e of lp) addToken(run, e, now);
  } else if (text && !run.hasLogprobs) {
    if (run.tFirst == null) run.tFirst = now;
    run.tLast = now;
    run.plainCount = (run.plainCount || 0) + 1;
    addPlain(run, text);
  }
  if (ch.finish_reason) run.finish = ch.finish_reason;
  if (obj.usage) run.usage = obj.usage;
  if (obj.tokenwise) run.tw = obj.tokenwise;
  scheduleUpdate(run);
}

let rafPending = false;
function scheduleUpdate(run) {
  if (rafPending) return;
  rafPending = true;
  requestAnimationFrame(() => {
    rafPending = false;
    updateLive(run);
    drawSpark(run);
    autoscroll();
  });
}
function nTok(run) { return run.tokens.length || run.plainCount || 0; }
function liveTps(run) {
  const n = nTok(run);
  if (n < 2 || run.tLast == null || run.tLast <= run.tFirst) return null;
  return (n - 1) / ((run.tLast - run.tFirst) / 1000);
}
function updateLive(run) {
  const tps = run.tw?.decode_tokens_per_sec ?? liveTps(run);
  $('m-tps').textContent = fmt.num(tps, 1);
  $('m-ntok').textContent = String(run.usage?.completion_tokens ?? nTok(run));
  $('m-ttft').textContent = run.tFirst != null ? fmt.ms(run.tFirst - run.t0) : '–';
  const kv = run.tw?.kv_bytes ?? run.kvMetric;
  if (kv != null) $('m-kv').textContent = fmt.bytes(kv);
  renderFoot(run);
}
function runStats(run) {
  let sh = 0, se = 0, nl = 0, ne = 0;
  for (const i of run.tokens) {
    const r = S.toks[i];
    if (r.logprob != null) { sh -= r.logprob; nl++; }
    if (r.entropyBits != null) { se += r.entropyBits; ne++; }
  }
  return { ppl: nl ? Math.exp(sh / nl) : null, surp: nl ? sh / nl / LN2 : null, ent: ne ? se / ne : null };
}
function renderFoot(run) {
  const st = runStats(run);
  const items = [];
  const add = (k, v, title) => items.push(`<span class="stat"${title ? ` title="${esc(title)}"` : ''}><b>${esc(v)}</b> ${esc(k)}</span>`);
  add('tokens', String(run.usage?.completion_tokens ?? nTok(run)));
  const tps = liveTps(run);
  if (tps != null) add('tok/s', fmt.num(tps, 1), 'Measured in the browser from chunk arrival times');
  if (run.tFirst != null) add('TTFT', fmt.ms(run.tFirst - run.t0), 'Time to first token, measured in the browser');
  if (st.ent != null) add('bits H̄', fmt.num(st.ent, 2), 'Mean entropy per token' + (run.tokens.some((i) => S.toks[i].entropyApprox) ? ' (lower bound from the top alternatives)' : ''));
  if (st.surp != null) add('bits/tok', fmt.num(st.surp, 2), 'Mean surprisal of the chosen tokens');
  if (st.ppl != null) add('PPL', fmt.num(st.ppl, 2), 'exp(mean −logprob) of the sampled tokens');
  if (run.usage?.prompt_tokens != null) add('prompt tok', String(run.usage.prompt_tokens));
  if (run.tw?.prefill_tokens_per_sec != null) add('prefill tok/s', fmt.num(run.tw.prefill_tokens_per_sec, 1), 'Reported by the server');
  if (run.tw?.decode_tokens_per_sec != null) add('decode tok/s', fmt.num(run.tw.decode_tokens_per_sec, 1), 'Reported by the server');
  const kv = run.tw?.kv_bytes ?? run.kvMetric;
  if (kv != null) add('KV', fmt.bytes(kv), run.tw?.kv_bytes != null ? 'KV cache bytes, reported by the server' : 'KV bytes held (from /metrics)');
  if (run.usage?.total_tokens != null && S.info?.n_ctx) add('ctx', `${run.usage.total_tokens}/${S.info.n_ctx}`, 'Context used');
  let end = '';
  if (run.error) end = `<span class="stat err">error: ${esc(run.error)}</span>`;
  else if (run.aborted) end = '<span class="stat warn">stopped</span>';
  else if (run.finish || run.tw?.stop_reason) {
    const why = run.tw?.stop_reason && run.tw.stop_reason !== run.finish ? `${run.finish || ''} · ${run.tw.stop_reason}` : run.finish;
    end = `<span class="stat fin">${esc(why)}</span>`;
  }
  run.foot.innerHTML = items.join('') + end;
}

// ---------- sparkline ----------
function drawSpark(run) {
  const c = run.spark;
  if (!c || !run.tokens.length) { if (c) c.classList.remove('on'); return; }
  c.classList.add('on');
  const dpr = window.devicePixelRatio || 1;
  const W = c.clientWidth, H = 28;
  if (!W) return;
  if (c.width !== Math.round(W * dpr)) { c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
  const g = c.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  const n = run.tokens.length, max = S.scaleMax[S.colorBy];
  const w = Math.min(6, W / n);
  run.sparkW = w;
  for (let k = 0; k < n; k++) {
    const idx = run.tokens[k];
    const v = metric(S.toks[idx]);
    if (v == null) continue;
    const h = Math.max(1.5, Math.min(1, v / max) * (H - 2));
    g.fillStyle = colour(v, max, false);
    g.globalAlpha = idx === S.sel || idx === S.hover ? 1 : 0.8;
    g.fillRect(k * w, H - h, Math.max(1, w - (w > 3 ? 1 : 0)), h);
  }
  g.globalAlpha = 1;
}
function bindSpark(run) {
  const c = run.spark;
  c.addEventListener('mousemove', (ev) => {
    if (!run.tokens.length || !run.sparkW) return;
    const k = Math.floor((ev.clientX - c.getBoundingClientRect().left) / run.sparkW);
    const idx = run.tokens[Math.max(0, Math.min(run.tokens.length - 1, k))];
    const span = run.out.querySelector(`span.tok[data-t="${idx}"]`);
    if (span) showTip(span, { anchor: 'spark', ev });
  });
  c.addEventListener('mouseleave', () => { if (S.pinned == null) hideTip(); });
}

// ---------- tooltip ----------
function tipHTML(rec) {
  const p = rec.logprob != null ? Math.exp(rec.logprob) : null;
  const surprisal = rec.logprob != null ? -rec.logprob / LN2 : null;
  let rank = -1;
  rec.top.forEach((a, i) => {
    if (rank < 0 && (a.token === rec.token || (a.bytes && rec.bytes && a.bytes.join() === rec.bytes.join()))) rank = i;
  });
  const shown = rec.bytes ? altText({ bytes: rec.bytes }) : fmt.tok(rec.token);
  // rank: the server's 0-based rank over the whole vocabulary if given, else the place among the alternatives
  const rankTxt = rec.rank != null ? `rank ${rec.rank + 1}` : rec.top.length ? (rank >= 0 ? `rank ${rank + 1}` : `rank &gt;${rec.top.length}`) : '';
  const maxP = rec.top.reduce((m, a) => Math.max(m, Math.exp(a.logprob)), p || 0) || 1;
  let sum = 0;
  const rows = rec.top.map((a, i) => {
    const ap = Math.exp(a.logprob);
    sum += ap;
    return `<div class="alt${i === rank ? ' chosen' : ''}"><code>${esc(altText(a))}</code><span class="bar"><i style="width:${(100 * ap / maxP).toFixed(1)}%;background:${colour(-a.logprob / LN2, S.scaleMax.surprisal, false)}"></i></span><span class="p">${fmt.pct(ap)}</span></div>`;
  });
  if (rec.top.length && rank < 0 && p != null) {
    rows.push(`<div class="alt chosen off"><code>${esc(shown)}</code><span class="bar"><i style="width:${(100 * p / maxP).toFixed(1)}%"></i></span><span class="p">${fmt.pct(p)}</span></div>`);
  }
  const rest = 1 - sum;
  if (rec.top.length && rest > 0.0005) rows.push(`<div class="alt rest"><code>other</code><span class="bar"><i style="width:${(100 * Math.min(rest, maxP) / maxP).toFixed(1)}%"></i></span><span class="p">${fmt.pct(rest)}</span></div>`);
  const eTxt = rec.entropy != null ? `${fmt.num(rec.entropyBits, 2)} bits <small>(${fmt.num(rec.entropy, 2)} nats)</small>`
    : rec.entropyBits != null ? `≥ ${fmt.num(rec.entropyBits, 2)} bits <small>(top-${rec.top.length})</small>` : '–';
  return `<div class="tip-head"><code class="tip-tok">${esc(shown) || '∅'}</code><span class="tip-rank">${rankTxt}</span><span class="tip-pos">#${rec.i + 1}${rec.id != null ? ' · id ' + rec.id : ''}</span></div>
<dl class="tip-stats">
<div><dt>p</dt><dd>${p != null ? fmt.pct(p) : '–'}</dd></div>
<div><dt>logprob</dt><dd>${rec.logprob != null ? fmt.num(rec.logprob, 3) : '–'}</dd></div>
<div><dt>surprisal</dt><dd>${surprisal != null ? fmt.num(surprisal, 2) + ' bits' : '–'}</dd></div>
<div class="wide"><dt>entropy</dt><dd>${eTxt}</dd></div>
${rec.bytes ? `<div class="wide"><dt>bytes</dt><dd>${esc(hex(rec.bytes))}</dd></div>` : ''}
</dl>
${rows.length ? `<div class="alts"><div class="alts-h">top ${rec.top.length} alternatives</div>${rows.join('')}</div>` : '<div class="alts-h">no alternatives returned</div>'}`;
}
function showTip(span, opt = {}) {
  const idx = +span.dataset.t;
  const rec = S.toks[idx];
  if (!rec || rec.plain) return;
  const tip = $('tok-tip');
  if (S.hoverSpan && S.hoverSpan !== span) S.hoverSpan.classList.remove('hover');
  S.hoverSpan = span;
  S.hover = idx;
  span.classList.add('hover');
  if (tip.dataset.t !== String(idx) || tip.hidden) {
    tip.innerHTML = tipHTML(rec);
    tip.dataset.t = idx;
  }
  tip.classList.toggle('pinned', S.pinned === idx);
  tip.hidden = false;
  const r = opt.anchor === 'spark' ? { left: opt.ev.clientX - 8, right: opt.ev.clientX + 8, top: span.getBoundingClientRect().top, bottom: opt.ev.clientY + 10 } : span.getBoundingClientRect();
  const tw = tip.offsetWidth, th = tip.offsetHeight, vw = window.innerWidth, vh = window.innerHeight;
  let x = Math.max(8, Math.min(r.left, vw - tw - 8));
  let y = r.bottom + 8;
  if (y + th > vh - 8) y = opt.anchor === 'spark' ? opt.ev.clientY - th - 12 : r.top - th - 8;
  if (y < 8) y = Math.max(8, vh - th - 8);
  tip.style.left = x + 'px';
  tip.style.top = y + 'px';
  drawSpark(rec.run);
}
function hideTip() {
  const tip = $('tok-tip');
  tip.hidden = true;
  tip.classList.remove('pinned');
  S.pinned = null;
  if (S.hoverSpan) S.hoverSpan.classList.remove('hover');
  const run = S.hover != null ? S.toks[S.hover]?.run : null;
  S.hover = null; S.hoverSpan = null;
  if (run) drawSpark(run);
}

// ---------- keyboard token navigation ----------
function visibleTokSpans() { return [...document.querySelectorAll(`#view-${S.mode} span.tok`)]; }
function moveSel(delta, abs) {
  const spans = visibleTokSpans();
  if (!spans.length) return;
  let k = spans.findIndex((s) => +s.dataset.t === S.sel);
  if (abs === 'first') k = 0; else if (abs === 'last') k = spans.length - 1;
  else k = k < 0 ? (delta > 0 ? 0 : spans.length - 1) : Math.max(0, Math.min(spans.length - 1, k + delta));
  document.querySelectorAll('span.tok.sel').forEach((s) => s.classList.remove('sel'));
  const span = spans[k];
  S.sel = +span.dataset.t;
  span.classList.add('sel');
  span.scrollIntoView({ block: 'nearest' });
  S.pinned = S.sel;
  showTip(span);
}

// ---------- errors ----------
class ApiError extends Error { constructor(msg, type) { super(msg); this.type = type; } }
async function errorMessage(resp) {
  let text = '';
  try { text = await resp.text(); } catch (_) { /* ignore */ }
  try {
    const j = JSON.parse(text);
    if (j && j.error) return typeof j.error === 'string' ? j.error : (j.error.message || JSON.stringify(j.error));
  } catch (_) { /* not JSON */ }
  const plain = text.trim().startsWith('<') ? '' : text.trim().slice(0, 300);
  return `HTTP ${resp.status}${resp.statusText ? ' ' + resp.statusText : ''}${plain ? ': ' + plain : ''}`;
}
function showError(title, msg) {
  $('error-title').textContent = title;
  $('error-msg').textContent = msg;
  $('error').hidden = false;
}
function clearError() { $('error').hidden = true; }

// ---------- generation ----------
function setStreaming(on) {
  $('send').disabled = on;
  $('stop').disabled = !on;
  document.body.dataset.state = on ? 'streaming' : (S.info?.model ? 'ready' : 'offline');
  document.body.classList.toggle('busy', on);
  clearInterval(S.metricsTimer);
  if (on && S.metricsOk) { pollMetrics(); S.metricsTimer = setInterval(pollMetrics, 1000); }
}
function setStatus(s, cls = '') { const el = $('status'); el.textContent = s; el.className = 'status ' + cls; }

async function send() {
  if (S.current) return;
  const text = $('prompt').value;
  if (S.mode === 'completion' && !text.trim()) { $('prompt').focus(); setStatus('type a prompt first', 'warn'); return; }
  if (S.mode === 'chat' && !text.trim()) { $('prompt').focus(); setStatus('type a message first', 'warn'); return; }
  clearError();
  hideTip();
  $('empty').hidden = true;
  let url, body, run;
  if (S.mode === 'chat') {
    const sys = $('system').value.trim();
    S.chat.push({ role: 'user', content: text });
    const msgs = (sys ? [{ role: 'system', content: sys }] : []).concat(S.chat.filter((m) => m.content !== ''));
    body = requestBody({ messages: msgs });
    url = '/v1/chat/completions';
    const u = document.createElement('div');
    u.className = 'msg user';
    u.innerHTML = '<div class="role">you</div><div class="bubble"></div>';
    u.querySelector('.bubble').textContent = text;
    $('view-chat').appendChild(u);
    run = newRun($('view-chat'), body, 'chat');
    $('prompt').value = '';
  } else {
    body = requestBody({ prompt: text });
    url = '/v1/completions';
    run = newRun($('view-completion'), body, 'completion', text);
    S.runs.push(run);
  }
  S.current = run;
  S.ctrl = new AbortController();
  setStreaming(true);
  setStatus('prefill…', 'busy');
  autoscroll(true);
  try {
    const resp = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(body),
      signal: S.ctrl.signal,
    });
    if (!resp.ok) throw new ApiError(await errorMessage(resp));
    const ct = resp.headers.get('content-type') || '';
    if (ct.includes('application/json')) {
      handleChunk(run, await resp.json());   // server ignored stream:true; still render it
    } else {
      await readSSE(resp, (obj) => {
        if (run.tFirst == null) setStatus('streaming', 'busy');
        handleChunk(run, obj);
      });
    }
    run.decoder.decode();  // flush
    setStatus(run.finish ? `done · ${run.finish}` : 'done', 'ok');
  } catch (e) {
    if (e.name === 'AbortError') {
      run.aborted = true;
      setStatus('stopped', 'warn');
    } else {
      run.error = e instanceof ApiError ? e.message : `network error: ${e.message}`;
      showError(e instanceof ApiError ? 'Server error' : 'Request failed', run.error);
      setStatus('error', 'err');
    }
  } finally {
    if (run.kind === 'chat') {
      S.chat.push({ role: 'assistant', content: run.content });
    }
    run.el.classList.remove('streaming');
    run.el.classList.add(run.error ? 'error' : run.aborted ? 'aborted' : 'done');
    run.caret.remove();
    if (!nTok(run) && !run.error && !run.aborted) run.out.insertAdjacentHTML('beforeend', '<span class="none">(no tokens generated)</span>');
    S.current = null;
    S.ctrl = null;
    setStreaming(false);
    updateLive(run);
    drawSpark(run);
    saveSettings();
  }
}

async function readSSE(resp, onData) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder('utf-8');
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buf += dec.decode(value, { stream: true });
    if (done) buf += dec.decode() + '\n\n';
    let m;
    while ((m = /\r?\n\r?\n/.exec(buf))) {
      const block = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (!data) continue;
      if (data.trim() === '[DONE]') { reader.cancel().catch(() => {}); return; }
      let obj;
      try { obj = JSON.parse(data); } catch (_) { throw new ApiError('malformed stream chunk: ' + data.slice(0, 200)); }
      onData(obj);
    }
    if (done) return;
  }
}

function stop() { if (S.ctrl) S.ctrl.abort(); }

function autoscroll(force) {
  const t = $('transcript');
  const near = t.scrollHeight - t.scrollTop - t.clientHeight < 120;
  if (force || near) t.scrollTop = t.scrollHeight;
}

function setMode(mode, save = true) {
  if (S.current) return;
  S.mode = mode;
  setRadio('mode', mode);
  document.body.dataset.mode = mode;
  $('view-completion').hidden = mode !== 'completion';
  $('view-chat').hidden = mode !== 'chat';
  $('send').textContent = mode === 'chat' ? 'Send' : 'Generate';
  $('prompt').placeholder = mode === 'chat' ? 'Message the model…' : 'Once upon a time';
  updateEmpty();
  hideTip();
  if (save) saveSettings();
}
function updateEmpty() {
  const v = $(`view-${S.mode}`);
  $('empty').hidden = v.children.length > 0;
}
function clearView() {
  if (S.current) return;
  hideTip();
  if (S.mode === 'chat') { S.chat = []; $('view-chat').innerHTML = ''; } else { S.runs = []; $('view-completion').innerHTML = ''; }
  clearError();
  setStatus('');
  updateEmpty();
}

// ---------- wiring ----------
function init() {
  updateLegend();
  setTheme('');
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); send(); });
  $('stop').addEventListener('click', stop);
  $('clear').addEventListener('click', clearView);
  $('error-close').addEventListener('click', clearError);
  $('theme-toggle').addEventListener('click', () => {
    const cur = document.documentElement.dataset.theme || '';
    setTheme({ '': 'dark', dark: 'light', light: '' }[cur]);
    saveSettings();
    repaintAll();
  });
  document.querySelector('.main').addEventListener('click', () => {
    if ($('settings').classList.contains('open')) $('settings-toggle').click();
  });
  $('settings-toggle').addEventListener('click', (e) => {
    e.stopPropagation();
    const open = $('settings').classList.toggle('open');
    $('settings-toggle').setAttribute('aria-expanded', String(open));
  });
  document.querySelectorAll('input[name=mode]').forEach((r) => r.addEventListener('change', () => setMode(r.value)));
  document.querySelectorAll('input[name=colorby]').forEach((r) => r.addEventListener('change', () => {
    S.colorBy = r.value; repaintAll(); saveSettings();
    const t = $('tok-tip'); if (!t.hidden && S.hoverSpan) showTip(S.hoverSpan);
  }));
  $('legend').addEventListener('click', () => {
    const list = SCALES[S.colorBy];
    const k = list.indexOf(S.scaleMax[S.colorBy]);
    S.scaleMax[S.colorBy] = list[(k + 1) % list.length];
    repaintAll(); saveSettings();
  });
  $('show-ws').addEventListener('change', () => { syncSettingsUI(); saveSettings(); });
  $('settings').addEventListener('change', () => { syncSettingsUI(); saveSettings(); });
  $('settings').addEventListener('input', () => syncSettingsUI());
  $('prompt').addEventListener('input', () => { clearTimeout(init.t); init.t = setTimeout(saveSettings, 400); });
  $('reset-settings').addEventListener('click', () => {
    for (const id of PERSIST) if (id in S.defaults) $(id).value = S.defaults[id];
    syncSettingsUI(); saveSettings();
  });

  const tr = $('transcript');
  tr.addEventListener('mouseover', (e) => {
    const span = e.target.closest && e.target.closest('span.tok');
    if (span && (S.pinned == null || S.pinned === +span.dataset.t)) showTip(span);
  });
  tr.addEventListener('mouseout', (e) => {
    const span = e.target.closest && e.target.closest('span.tok');
    if (span && S.pinned == null && !(e.relatedTarget && span.contains(e.relatedTarget))) hideTip();
  });
  tr.addEventListener('click', (e) => {
    const span = e.target.closest && e.target.closest('span.tok');
    if (!span) { if (S.pinned != null) hideTip(); return; }
    const idx = +span.dataset.t;
    if (S.pinned === idx) { hideTip(); return; }
    S.pinned = idx;
    showTip(span);
  });
  tr.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowRight' || e.key === 'ArrowDown') { e.preventDefault(); moveSel(1); }
    else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') { e.preventDefault(); moveSel(-1); }
    else if (e.key === 'Home') { e.preventDefault(); moveSel(0, 'first'); }
    else if (e.key === 'End') { e.preventDefault(); moveSel(0, 'last'); }
  });
  tr.addEventListener('scroll', () => { if (S.pinned == null) hideTip(); }, { passive: true });
  window.addEventListener('resize', () => { for (const r of allRuns()) drawSpark(r); });

  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); return; }
    if (e.key === 'Escape') {
      if (S.current) { e.preventDefault(); stop(); return; }
      hideTip();
      document.querySelectorAll('span.tok.sel').forEach((s) => s.classList.remove('sel'));
      S.sel = null;
      if ($('settings').classList.contains('open')) $('settings-toggle').click();
      return;
    }
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement?.tagName || '');
    if (e.key === '/' && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); $('prompt').focus(); }
  });

  setMode('completion', false);
  loadInfo();
  pollMetrics();
}

init();
