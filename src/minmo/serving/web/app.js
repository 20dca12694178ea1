// minmo browser client: mic -> AudioWorklet -> pcm16 24 kHz -> OpenAI Realtime events over a
// WebSocket; reply audio deltas -> gapless AudioWorklet player. Talking over the assistant
// interrupts it (the server's speech_started flushes the player); so do "Stop reply" and Esc
// (response.cancel + output_audio_buffer.clear). Plain JS, no build step.
"use strict";

const RATE = 24000;
const FRAME = 960; // 40 ms per input_audio_buffer.append

const ui = {
  banner: document.getElementById("banner"),
  model: document.getElementById("model"),
  key: document.getElementById("key"),
  toggle: document.getElementById("toggle"),
  hush: document.getElementById("hush"),
  state: document.getElementById("state"),
  stateText: document.getElementById("statetext"),
  status: document.getElementById("status"),
  log: document.getElementById("log"),
};

// Exposed for tests and curious users.
const minmo = (window.minmo = {
  connected: false, sessionId: null, events: {}, userTranscripts: [], assistantTexts: [],
  audioChunks: 0, audioSamples: 0, played: 0, latenciesMs: [], interrupted: 0, errors: [],
  hushed: 0, bufferMs: 0,
});

let ws = null, ctx = null, mic = null, micNode = null, player = null;
let speechStoppedAt = null, firstAudioPending = false, activeResponse = null;
const hushedResponses = new Set(); // their audio still on the wire is not played
// capture clock: [samples sent so far, performance.now() when that frame was captured]
let sentSamples = 0;
const sentLog = [];

function captureTime(sample) {
  // wall time at which the mic frame holding `sample` (24 kHz stream position) was captured
  for (let i = sentLog.length - 1; i >= 0; i--) {
    if (sentLog[i][0] - FRAME <= sample) return sentLog[i][1];
  }
  return sentLog.length ? sentLog[0][1] : performance.now();
}
const userTurns = new Map(); // item_id -> element
const replies = new Map(); // response_id -> {el, text}

function setState(state) {
  ui.state.dataset.state = state;
  ui.stateText.textContent = state.replace("-", " ");
  ui.hush.hidden = !(state === "speaking" || state === "thinking");
}

// Stop the assistant now: cancel the reply being generated (if any), and drop what is queued
// for playback, here and on the server's playback clock (so it stops counting as speaking).
function hush() {
  if (!ws) return;
  if (activeResponse) {
    send({ type: "response.cancel" });
    hushedResponses.add(activeResponse);
  }
  send({ type: "output_audio_buffer.clear" });
  if (player) player.port.postMessage("clear");
  minmo.hushed += 1;
  setState("listening");
}
minmo.hush = hush;

function showModel(info) {
  if (!info) return;
  ui.model.textContent = `${info.name} (${info.source})` +
    (info.quantization ? " · " + info.quantization.split(":")[0] : "");
  if (info.random_weights || info.warning) {
    // the server's warning already says "random weights — not a trained model" when so
    ui.banner.style.display = "block";
    ui.banner.textContent = "⚠ " + (info.warning || "random weights — not a trained model");
  }
}

fetch("/healthz").then((r) => r.json()).then((h) => showModel(h.model)).catch(() => {});

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = `turn ${role}`;
  el.appendChild(document.createTextNode(text));
  const meta = document.createElement("span");
  meta.className = "meta";
  el.appendChild(meta);
  ui.log.appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function setText(el, text) { el.firstChild.textContent = text; }
function setMeta(el, text) { el.querySelector(".meta").textContent = text; }

function b64ToFloat(b64) {
  const bin = atob(b64);
  const n = bin.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    if (v >= 32768) v -= 65536;
    out[i] = v / 32768;
  }
  return out;
}

function floatToB64(samples) {
  let bin = "";
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    const s = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    const u = s & 0xffff;
    bin += String.fromCharCode(u & 0xff, u >> 8);
  }
  return btoa(bin);
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

function onEvent(ev) {
  minmo.events[ev.type] = (minmo.events[ev.type] || 0) + 1;
  switch (ev.type) {
    case "session.created":
      minmo.sessionId = ev.session.id;
      showModel(ev.session.minmo);
      send({ type: "session.update", session: { type: "realtime",
        audio: { input: { transcription: { model: "minmo" },
                          turn_detection: { type: "server_vad" } } } } });
      setState("listening");
      break;
    case "input_audio_buffer.speech_started": {
      if (player) player.port.postMessage("clear"); // barge-in: stop playing at once
      setState("user-speaking");
      const el = bubble("user", "…");
      userTurns.set(ev.item_id, el);
      break;
    }
    case "input_audio_buffer.speech_stopped":
      // latency is measured from where the VAD put the end of speech, in capture time
      speechStoppedAt = captureTime(ev.audio_end_ms * (RATE / 1000));
      firstAudioPending = true;
      setState("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const el = userTurns.get(ev.item_id);
      if (el) setText(el, (el.firstChild.textContent === "…" ? "" : el.firstChild.textContent) + ev.delta);
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const el = userTurns.get(ev.item_id) || bubble("user", "");
      setText(el, ev.transcript || "(no transcript)");
      minmo.userTranscripts.push(ev.transcript);
      break;
    }
    case "response.created":
      activeResponse = ev.response.id;
      replies.set(ev.response.id, { el: bubble("assistant", ""), text: "" });
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta": {
      const r = replies.get(ev.response_id);
      if (r) { r.text += ev.delta; setText(r.el, r.text); }
      break;
    }
    case "response.output_audio.delta": {
      if (hushedResponses.has(ev.response_id)) break;
      const samples = b64ToFloat(ev.delta);
      minmo.audioChunks += 1;
      minmo.audioSamples += samples.length;
      if (player) player.port.postMessage(samples, [samples.buffer]);
      if (firstAudioPending && speechStoppedAt !== null) {
        const ms = Math.round(performance.now() - speechStoppedAt);
        minmo.latenciesMs.push(ms);
        const r = replies.get(ev.response_id);
        const buffered = minmo.bufferMs ? ` (+${minmo.bufferMs} ms playback buffer)` : "";
        if (r) setMeta(r.el, `first audio ${ms} ms after end of speech${buffered}`);
        firstAudioPending = false;
      }
      setState("speaking");
      break;
    }
    case "response.done": {
      if (player) player.port.postMessage("end"); // play out what is queued, then learn
      if (activeResponse === ev.response.id) activeResponse = null;
      const r = replies.get(ev.response.id);
      const status = ev.response.status;
      if (r) {
        minmo.assistantTexts.push(r.text);
        if (status === "cancelled") {
          minmo.interrupted += 1;
          r.el.classList.add("cancelled");
          setMeta(r.el, (r.el.querySelector(".meta").textContent + " · interrupted").trim());
        }
      }
      break;
    }
    case "error":
      // a Stop reply that crossed the reply's own end on the wire: nothing to cancel
      if (ev.error.code === "response_cancel_not_active") break;
      minmo.errors.push(ev.error);
      ui.status.textContent = `server: ${ev.error.message}`;
      break;
  }
}

async function start() {
  ui.toggle.disabled = true;
  try {
    ctx = new AudioContext({ sampleRate: RATE });
    await ctx.audioWorklet.addModule("/static/worklet.js");
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const source = ctx.createMediaStreamSource(mic);
    micNode = new AudioWorkletNode(ctx, "mic-capture", { processorOptions: { frameSamples: FRAME } });
    player = new AudioWorkletNode(ctx, "pcm-player", { outputChannelCount: [1] });
    player.port.onmessage = (e) => {
      minmo.played = e.data.played;
      minmo.bufferMs = e.data.bufferMs;
      if (e.data.drained && ui.state.dataset.state === "speaking") setState("listening");
    };
    player.connect(ctx.destination);
    source.connect(micNode);
    await ctx.resume();

    const proto = location.protocol === "https:" ? "wss" : "ws";
    const key = ui.key.value.trim();
    const protocols = key ? ["realtime", "openai-insecure-api-key." + key] : ["realtime"];
    ws = new WebSocket(`${proto}://${location.host}/v1/realtime?model=minmo`, protocols);
    ws.onopen = () => { minmo.connected = true; ui.status.textContent = "connected — talk any time"; };
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onclose = (e) => {
      minmo.connected = false;
      ui.status.textContent = `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`;
      stop();
    };
    micNode.port.onmessage = (e) => {
      sentSamples += e.data.length;
      sentLog.push([sentSamples, performance.now()]);
      if (sentLog.length > 1500) sentLog.shift(); // last 60 s
      send({ type: "input_audio_buffer.append", audio: floatToB64(e.data) });
    };
    ui.toggle.textContent = "End";
    ui.toggle.classList.add("stop");
  } catch (err) {
    ui.status.textContent = `could not start: ${err}`;
    minmo.errors.push(String(err));
    stop();
  } finally {
    ui.toggle.disabled = false;
  }
}

function stop() {
  if (ws) { const w = ws; ws = null; try { w.close(); } catch (e) {} }
  if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
  if (ctx) { ctx.close(); ctx = null; }
  micNode = null; player = null; activeResponse = null;
  sentSamples = 0; sentLog.length = 0;
  ui.toggle.textContent = "Start";
  ui.toggle.classList.remove("stop");
  setState("idle");
}

ui.toggle.addEventListener("click", () => (ws ? stop() : start()));
ui.hush.addEventListener("click", hush);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") hush(); });
