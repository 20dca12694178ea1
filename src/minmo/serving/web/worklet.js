// AudioWorklet processors for the minmo page (the AudioContext runs at 24 kHz, the
// Realtime protocol's rate).
//
// mic-capture: posts the microphone as Float32Array blocks of `frameSamples` samples.
// pcm-player: gapless playback of queued Float32Array chunks with an adaptive playout
//   delay (below); "end" marks a reply's audio complete, "clear" drops everything queued
//   (barge-in); posts {played, queued, drained, bufferMs} about every 100 ms and when it
//   stops playing.

class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = (options.processorOptions || {}).frameSamples || 960;
    this.buffer = new Float32Array(this.frameSamples);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channel = input[0];
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(this.frameSamples - this.filled, channel.length - offset);
        this.buffer.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.frameSamples) {
          this.port.postMessage(this.buffer.slice(0));
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

// The player's adaptive playout delay: a reply starts (or resumes after running dry) once
// `target` samples are queued, or once its audio is complete. Running dry mid-reply raises
// `target` by the silence it caused (at most MAX_TARGET); a reply played without running
// dry lowers it by a quarter. A server that keeps ahead of real time (a GPU) keeps it at 0;
// one that falls behind at the start of a reply (a small CPU) gets a delay that covers it.
const MAX_TARGET = 24000; // 1 s at 24 kHz

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.readIndex = 0;
    this.queued = 0;
    this.played = 0;
    this.sinceReport = 0;
    this.wasPlaying = false;
    this.target = 0; // playout delay, samples
    this.newReply();
    this.port.onmessage = (event) => this.receive(event.data);
  }

  newReply() {
    this.holding = true; // waiting for `target` samples or the reply's end
    this.started = false; // this reply has begun playing
    this.ended = false; // "end" came: no more audio for this reply
    this.gap = 0; // silence output since this reply ran dry
    this.ranDry = false;
  }

  receive(msg) {
    if (msg === "clear") { // barge-in / stop: drop everything queued, keep what was learnt
      this.queue = [];
      this.readIndex = 0;
      this.queued = 0;
      this.newReply();
    } else if (msg === "end") { // the reply's audio is complete
      if (this.queued > 0) this.ended = true;
      else this.newReply(); // all played (or none came): what comes next is a new reply
    } else {
      this.queue.push(msg);
      this.queued += msg.length;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (this.holding && this.queued > 0 && (this.queued >= this.target || this.ended)) {
      this.holding = false;
      this.started = true;
      if (this.gap > 0) this.target = Math.min(MAX_TARGET, this.target + this.gap);
      this.gap = 0;
    }
    let written = 0;
    while (!this.holding && written < out.length && this.queue.length > 0) {
      const head = this.queue[0];
      const n = Math.min(out.length - written, head.length - this.readIndex);
      out.set(head.subarray(this.readIndex, this.readIndex + n), written);
      written += n;
      this.readIndex += n;
      this.queued -= n;
      if (this.readIndex >= head.length) {
        this.queue.shift();
        this.readIndex = 0;
      }
    }
    out.fill(0, written);
    if (!this.holding && this.queued === 0) {
      if (this.ended) { // the reply is over
        if (!this.ranDry) this.target = Math.floor(this.target * 0.75);
        this.newReply();
      } else if (written < out.length) { // ran dry mid-reply: wait, and learn from it
        this.holding = true;
        this.ranDry = true;
      }
    }
    if (this.holding && this.started) this.gap += out.length - written;
    this.played += written;
    this.sinceReport += out.length;
    const playing = !this.holding && this.queued > 0;
    if (this.sinceReport >= 2400 || (this.wasPlaying && !playing)) {
      this.port.postMessage({ played: this.played, queued: this.queued, drained: !playing,
                              bufferMs: Math.round(this.target / 24) });
      this.sinceReport = 0;
    }
    this.wasPlaying = playing;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
registerProcessor("pcm-player", PcmPlayer);
