// Are replies reaching this page in bursts? A check for staff, in the stream reader. When
// something between the server and the browser buffers a stream (a proxy with response
// buffering on), a reply's token frames arrive in lumps after long silences, or all at once
// at its end, instead of one by one as the server sends them. The reader tells the meter, per
// network read, how many token frames that read completed (nothing is done per token); once
// the reply is saved, its figures say how long the server took to send them, and the meter
// compares. `manage.py check_streaming` measures the same thing from the command line.

/** A reply of fewer token frames, or sent in less time, says nothing either way. */
export const MIN_FRAMES = 20;
export const MIN_SENDING_MS = 1000;
/** A read that completes this many token frames or more... */
export const LUMP_FRAMES = 10;
/** ...after a silence this long at least (and long enough for ten frames to have been sent),
 *  brings frames that were held back. */
export const LUMP_SILENCE_MS = 250;

export class BurstMeter {
  constructor() {
    this.reads = []; // [when, token frames] per network read that completed any
    this.frames = 0;
  }

  /** A network read at ``now`` (``performance.now()``) completed ``frames`` token frames. */
  read(now, frames) {
    if (frames === 0) return;
    this.reads.push([now, frames]);
    this.frames += frames;
  }

  /** Whether the frames came in bursts, given how long the server took from the reply's first
   *  token to its end (``sendingMs``: its duration less its time to first token): all of them
   *  within a quarter of that time, or half of them or more in lumps after silences. */
  bursty(sendingMs) {
    if (this.frames < MIN_FRAMES || !(sendingMs >= MIN_SENDING_MS)) return false;
    const arrivingMs = this.reads.at(-1)[0] - this.reads[0][0];
    if (arrivingMs < sendingMs / 4) return true;
    const silence = Math.max(LUMP_SILENCE_MS, (LUMP_FRAMES * sendingMs) / this.frames);
    let held = 0;
    for (let i = 1; i < this.reads.length; i += 1) {
      const [when, frames] = this.reads[i];
      if (frames >= LUMP_FRAMES && when - this.reads[i - 1][0] >= silence) held += frames;
    }
    return held * 2 >= this.frames;
  }
}
