// AudioWorklet processors for the minmo page (the AudioContext runs at 24 kHz, the
// Realtime protocol's rate).
//
// mic-capture: posts the microphone as Float32Array blocks of `frameSamples` samples.
// pcm-player: gapless playback of queued Float32Array chunks; "clear" drops everything
//   queued (barge-in); posts {played, queued} about every 100 ms and "drained" when empty.

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

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.readIndex = 0;
    this.queued = 0;
    this.played = 0;
    this.sinceReport = 0;
    this.wasPlaying = false;
    this.port.onmessage = (event) => {
      if (event.data === "clear") {
        this.queue = [];
        this.readIndex = 0;
        this.queued = 0;
        return;
      }
      this.queue.push(event.data);
      this.queued += event.data.length;
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (written < out.length && this.queue.length > 0) {
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
    this.played += written;
    this.sinceReport += out.length;
    const playing = this.queued > 0;
    if (this.sinceReport >= 2400 || (this.wasPlaying && !playing)) {
      this.port.postMessage({ played: this.played, queued: this.queued, drained: !playing });
      this.sinceReport = 0;
    }
    this.wasPlaying = playing;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
registerProcessor("pcm-player", PcmPlayer);
