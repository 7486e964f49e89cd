// Plays ?src= with hls.js and keeps what happened in window.report, which drive.js reads:
// done once currentTime passes 2 s ("played") or hls.js reports a fatal error or a key-load
// error ("error").
"use strict";

const PLAYED_SECONDS = 2;

const report = {
  done: false,
  outcome: null,
  hlsVersion: Hls.version,
  h264: MediaSource.isTypeSupported('video/mp4; codecs="avc1.42c01e"'),
  keysLoaded: 0,
  errors: [],
};
window.report = report;

function finish(outcome) {
  if (!report.done) {
    report.done = true;
    report.outcome = outcome;
  }
}

const video = document.getElementById("video");
const src = new URLSearchParams(location.search).get("src");
if (!Hls.isSupported()) {
  report.errors.push({ type: "page", details: "hls.js is not supported (no MediaSource)", fatal: true });
  finish("error");
} else {
  // No retry of a failed key load: a refusal is final.
  const hls = new Hls({ debug: false });
  hls.on(Hls.Events.KEY_LOADED, () => report.keysLoaded++);
  hls.on(Hls.Events.ERROR, (_event, data) => {
    report.errors.push({
      type: data.type,
      details: data.details,
      fatal: data.fatal,
      code: data.response && data.response.code !== undefined ? data.response.code : null,
      message: data.error ? String(data.error.message || data.error) : null,
    });
    if (data.fatal || data.details === Hls.ErrorDetails.KEY_LOAD_ERROR) finish("error");
  });
  video.addEventListener("timeupdate", () => {
    if (video.currentTime > PLAYED_SECONDS) finish("played");
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch((e) => report.errors.push({ type: "page", details: "play() refused: " + e, fatal: false }));
  });
  hls.loadSource(src);
  hls.attachMedia(video);
}
