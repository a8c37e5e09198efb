// Drives kpulse's status page in Debian's Chromium: node status_page.mjs <agent-url> <out-dir>
// Prints one JSON line with what it saw; exits non-zero on any failed check. Screenshots of
// each view go to <out-dir>.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, out] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const failures = [];
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("#plugins tbody tr", { timeout: 10000 });
  const plugins = await page.$$eval("#plugins tbody tr", (rows) =>
    rows.map((r) => ({ name: r.dataset.plugin, state: r.cells[1].textContent, buttons: r.querySelectorAll("button").length })));
  await page.waitForSelector("#events tbody tr", { timeout: 10000 });
  const events = await page.$$eval("#events tbody tr", (rows) => rows.length);
  const health = await page.textContent("#health");
  await page.screenshot({ path: `${out}/status-overview.png`, fullPage: true });
  // Live tail: the next saved document shows within 2 s of being saved.
  const before = await page.$$eval("#tail li", (items) => items.length);
  const t0 = Date.now();
  await page.waitForFunction((n) => document.querySelectorAll("#tail li").length > n, before, { timeout: 5000 });
  const tailMs = Date.now() - t0;
  const tail = await page.textContent("#tail li");
  await page.locator("#tail").screenshot({ path: `${out}/status-live-tail.png` });
  // The event filter.
  await page.fill("#filter input[name=tracer]", "no-such-tracer");
  await page.click("#filter button");
  await page.waitForFunction(() => document.querySelectorAll("#events tbody tr").length === 0, null, { timeout: 5000 });
  await page.locator("#containers").screenshot({ path: `${out}/status-containers.png` });
  const containers = await page.$$eval("#containers tbody tr", (rows) => rows.map((r) => r.dataset.container));
  console.log(JSON.stringify({ plugins, events, health, tailMs, tail, containers, consoleErrors }));
  if (consoleErrors.length) failures.push("console errors: " + consoleErrors.join("; "));
} catch (error) {
  failures.push(String(error));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
