"""The status page: one card per pipeline (live view, model, speed, source, recent events), the
agent's MQTT connection and spool; no external assets, readable on a phone.

The HTML is complete when served (every number is in it, so it reads without JavaScript); a small
script then refreshes the numbers from /api/state and /api/events every REFRESH_S and reconnects
a live view that dropped (an agent restart). Everything that comes from configuration, models or
events is escaped (html.escape in the page, textContent in the script).
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Mapping, Sequence
from urllib.parse import quote

REFRESH_S = 2.0

STYLE = """
:root{color-scheme:dark;--bg:#111418;--card:#1b2027;--line:#2c333d;--text:#e6e9ee;--dim:#9aa4b1;--ok:#3fb950;--bad:#f85149;--warn:#d29922}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--text);font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:baseline;padding:.8rem 1rem;border-bottom:1px solid var(--line)}
h1{font-size:1.25rem;margin:0}h2{font-size:1.1rem;margin:0 0 .5rem;display:flex;gap:.5rem;align-items:center}h3{font-size:.95rem;margin:.8rem 0 .3rem;color:var(--dim)}
main{display:grid;gap:1rem;padding:1rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,26rem),1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.8rem}
.live{display:block;width:100%;height:auto;min-height:8rem;background:#000;border-radius:.4rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:.7rem 0 0}dt{color:var(--dim)}dd{margin:0;overflow-wrap:anywhere}
.pill{font-size:.8rem;padding:.05rem .5rem;border-radius:1rem;border:1px solid currentColor}
.ok{color:var(--ok)}.bad{color:var(--bad)}.warn{color:var(--warn)}.dim{color:var(--dim)}
ol{margin:0;padding-left:1.2rem;font-size:.9rem}code{font-size:.85em}
footer{padding:0 1rem 1rem;color:var(--dim);font-size:.85rem}a{color:#58a6ff}
#banner{display:none;background:var(--bad);color:#fff;padding:.4rem 1rem}
"""

SCRIPT = """
const TOKEN = %(token)s;
const withToken = (path) => path + TOKEN;
function pill(el, text, cls) { el.textContent = text; el.className = 'pill ' + cls; }
function ms(v) { return (v === undefined || v === null) ? '–' : Number(v).toFixed(2) + ' ms'; }
function statusClass(s) { return s === 'running' ? 'ok' : (s === 'failed' ? 'bad' : 'warn'); }
function sourceClass(s) { return (s === 'live' || s === 'playing') ? 'ok' : (s === 'lost' ? 'bad' : 'warn'); }
function eventText(e) {
  const when = new Date(e.ts * 1000).toLocaleTimeString();
  if (e.type === 'change') return when + '  ' + e.label + ' (was ' + (e.previous || '–') + ')';
  return when + '  ' + e.type + ' ' + e.label + ' #' + e.track_id + ' ' + Math.round(e.score * 100) + '%%' +
         (e.zones && e.zones.length ? ' in ' + e.zones.join(', ') : '');
}
async function refresh() {
  try {
    const [state, events] = await Promise.all([
      fetch(withToken('/api/state'), {cache: 'no-store'}).then(r => { if (!r.ok) throw r.status; return r.json(); }),
      fetch(withToken('/api/events'), {cache: 'no-store'}).then(r => r.ok ? r.json() : {})]);
    document.getElementById('banner').style.display = 'none';
    const cards = document.querySelectorAll('section[data-pipeline]');
    if (cards.length !== Object.keys(state.pipelines).length) { location.reload(); return; }
    for (const card of cards) {
      const p = state.pipelines[card.dataset.pipeline];
      if (!p) { location.reload(); return; }
      const set = (k, v) => { const el = card.querySelector('[data-k="' + k + '"]'); if (el) el.textContent = v; };
      pill(card.querySelector('.status'), p.status, statusClass(p.status));
      if (p.source) pill(card.querySelector('[data-k="source"]'), p.source.state, sourceClass(p.source.state));
      set('fps', p.fps !== undefined ? Number(p.fps).toFixed(1) : '–');
      set('inference_ms', ms(p.inference_ms)); set('total_ms', ms(p.total_ms));
      set('frames', p.frames_processed !== undefined ?
          p.frames_processed + ' processed, ' + p.frames_dropped + ' dropped' : '–');
      set('error', p.error || '');
      const list = card.querySelector('ol');
      if (list && events[card.dataset.pipeline]) {
        const items = events[card.dataset.pipeline].slice(-8).reverse();
        list.replaceChildren(...items.map(e => { const li = document.createElement('li'); li.textContent = eventText(e); return li; }));
        if (!items.length) { const li = document.createElement('li'); li.className = 'dim'; li.textContent = 'none yet'; list.append(li); }
      }
    }
    const mqtt = document.getElementById('mqtt');
    if (mqtt && state.mqtt) {
      pill(mqtt, state.mqtt.connected ? 'MQTT connected' : 'MQTT disconnected', state.mqtt.connected ? 'ok' : 'bad');
      const spool = document.getElementById('spool');
      if (spool && state.mqtt.spool) spool.textContent = state.mqtt.spool.messages + ' messages (' +
          Math.round(state.mqtt.spool.bytes / 1024) + ' KiB)';
    }
    document.getElementById('uptime').textContent = Math.round(state.uptime_s) + ' s';
    document.getElementById('updated').textContent = new Date().toLocaleTimeString();
  } catch (err) {
    const banner = document.getElementById('banner');
    banner.textContent = 'The agent does not answer (' + err + '); retrying.'; banner.style.display = 'block';
  }
}
for (const img of document.querySelectorAll('img.live')) {
  img.addEventListener('error', () => setTimeout(() => {
    img.src = img.dataset.src + (img.dataset.src.includes('?') ? '&' : '?') + 'r=' + Date.now(); }, %(retry_ms)d));
}
setInterval(refresh, %(refresh_ms)d);
"""


def render_page(state: Mapping[str, Any], events: Mapping[str, Sequence[Mapping[str, Any]]], token_query: str = "") -> str:
    """The whole page for this `state` (the state topic's dict) and recent `events` per pipeline."""
    e = html.escape
    device = str(state.get("device", ""))
    mqtt = state.get("mqtt")
    cards = "\n".join(_card(name, p, events.get(name, ()), token_query)
                      for name, p in state.get("pipelines", {}).items())
    if mqtt is not None:
        spool = mqtt.get("spool")
        connection = (f'<span id="mqtt" class="pill {"ok" if mqtt.get("connected") else "bad"}">'
                      f'MQTT {"connected" if mqtt.get("connected") else "disconnected"}</span>')
        spool_text = (f'<span class="dim">spool</span> <span id="spool">{spool.get("messages", 0)} messages '
                      f'({round(spool.get("bytes", 0) / 1024)} KiB)</span>') if spool else ""
    else:
        connection, spool_text = '<span class="pill dim">MQTT off</span>', ""
    token_js = json.dumps(token_query).replace("<", "\\u003c")
    script = SCRIPT % {"token": token_js, "refresh_ms": int(REFRESH_S * 1000), "retry_ms": int(REFRESH_S * 1000)}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(device)} · edge-agent</title><style>{STYLE}</style></head>
<body><div id="banner" role="alert"></div>
<header><h1>{e(device)}</h1><span class="dim">edge-agent {e(str(state.get("version", "")))} · up
<span id="uptime">{round(float(state.get("uptime_s", 0)))} s</span></span>{connection}{spool_text}</header>
<main>
{cards}
</main>
<footer><a href="{e("/metrics" + token_query)}">/metrics</a> · <a href="{e("/api/state" + token_query)}">/api/state</a> ·
<a href="{e("/healthz" + token_query)}">/healthz</a> · updated <span id="updated">{time.strftime("%H:%M:%S")}</span></footer>
<script>{script}</script>
</body></html>
"""


def _card(name: str, p: Mapping[str, Any], events: Sequence[Mapping[str, Any]], token_query: str) -> str:
    e = html.escape
    status = str(p.get("status", "unknown"))
    status_class = {"running": "ok", "failed": "bad"}.get(status, "warn")
    head = f'<h2>{e(name)} <span class="pill status {status_class}">{e(status)}</span></h2>'
    error = f'<dd class="bad" data-k="error">{e(str(p.get("error", "")))}</dd>'
    if "frames_processed" not in p:  # could not start
        return (f'<section data-pipeline="{e(name)}">{head}<dl><dt>error</dt>{error}</dl></section>')
    live = f"/pipelines/{quote(name, safe='')}/live{token_query}"
    model = p.get("model", {})
    sha256 = str(model.get("sha256", ""))
    source = p.get("source", {})
    source_state = str(source.get("state", ""))
    source_class = "ok" if source_state in ("live", "playing") else ("bad" if source_state == "lost" else "warn")
    rows = [
        ("fps", "fps", f'{float(p.get("fps", 0)):.1f}'),
        ("inference", "inference_ms", _ms(p.get("inference_ms"))),
        ("capture → publish", "total_ms", _ms(p.get("total_ms"))),
        ("frames", "frames", f'{p.get("frames_processed", 0)} processed, {p.get("frames_dropped", 0)} dropped'),
    ]
    listed = "".join(f'<dt>{e(title)}</dt><dd data-k="{key}">{e(value)}</dd>' for title, key, value in rows)
    recent = "".join(f"<li>{e(_event_text(ev))}</li>" for ev in list(events)[-8:][::-1]) or '<li class="dim">none yet</li>'
    return f"""<section data-pipeline="{e(name)}">{head}
<img class="live" src="{e(live)}" data-src="{e(live)}" alt="live view of {e(name)}">
<dl>{listed}
<dt>source</dt><dd><span class="pill {source_class}" data-k="source">{e(source_state)}</span>
{e(str(source.get("error", "")))}</dd>
<dt>model</dt><dd>{e(str(model.get("name", "")))} {e(str(model.get("version", "")))}
<code title="sha256 {e(sha256)}">{e(sha256[:12])}</code></dd>
<dt>runtime</dt><dd>{e(str(p.get("runtime", "")))}, delegate {e(str(p.get("delegate", "")))},
{e(str(p.get("num_threads", "")))} threads, {e(str(p.get("task", "")))}</dd>
<dt>error</dt>{error}
</dl>
<h3>recent events</h3><ol>{recent}</ol>
</section>"""


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f} ms"


def _event_text(event: Mapping[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(float(event.get("ts", 0))))
    if event.get("type") == "change":
        return f"{when}  {event.get('label')} (was {event.get('previous') or '–'})"
    zones = event.get("zones") or []
    return (f"{when}  {event.get('type')} {event.get('label')} #{event.get('track_id')} "
            f"{round(float(event.get('score', 0)) * 100)}%" + (f" in {', '.join(zones)}" if zones else ""))
