// Opens a page in Debian's Chromium (headless, through puppeteer-core: no browser is
// downloaded) and waits until the page's window.report is done, then prints it as JSON
// with the video's state. Usage: node drive.js <page-url> <timeout-ms>
// CHROMIUM names the browser (default /usr/bin/chromium). Exit 0 with the report on
// stdout; 2 when the page did not finish in time (the report so far on stdout).
"use strict";

const puppeteer = require("puppeteer-core");

async function main() {
  const [url, timeoutArg] = process.argv.slice(2);
  const timeout = Number(timeoutArg || 20000);
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--autoplay-policy=no-user-gesture-required",
      "--mute-audio",
      "--no-first-run",
    ],
  });
  const console_ = [];
  let status = 0;
  try {
    const page = await browser.newPage();
    page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
    page.on("requestfailed", (r) => console_.push(`requestfailed: ${r.url().split("?")[0]} ${r.failure() && r.failure().errorText}`));
    await page.goto(url, { waitUntil: "load", timeout });
    try {
      await page.waitForFunction("window.report && window.report.done", { timeout, polling: 50 });
    } catch (e) {
      status = 2;
    }
    const report = await page.evaluate(() => {
      const v = document.getElementById("video");
      const quality = v.getVideoPlaybackQuality();
      return Object.assign({}, window.report || {}, {
        currentTime: v.currentTime,
        framesDecoded: quality.totalVideoFrames,
      });
    });
    report.console = console_;
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await browser.close();
  }
  process.exit(status);
}

main().catch((e) => {
  process.stderr.write(`drive.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
