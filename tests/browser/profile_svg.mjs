// Opens a flame graph (/profiles/{tracer_id}.svg) in Debian's Chromium:
//   node profile_svg.mjs <svg-url> <out-dir> <frame-name>
// Prints one JSON line with what it saw; exits non-zero on any failed check. The screenshot
// goes to <out-dir>/flamegraph.png and is checked for being a picture, not a blank page:
// it is decoded back in the browser (no PNG library) and its pixels counted.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, out, frame] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const failures = [];
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  // The browser asks for /favicon.ico on its own (404): not the page's error.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.location().url.endsWith("/favicon.ico")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const response = await page.goto(url, { waitUntil: "load" });
  const contentType = response.headers()["content-type"];
  // inferno's frames: one <g> with a <title> "name (n samples, p%)" and a <rect> each.
  const frames = await page.$$eval("#frames > g", (gs) => gs.map((g) => g.querySelector("title")?.textContent || ""));
  const title = await page.textContent("#title");
  const png = await page.screenshot({ path: `${out}/flamegraph.png` });
  // Interactivity: clicking the named frame zooms (inferno shows "Reset Zoom").
  const named = frames.findIndex((t) => t.startsWith(frame + " ("));
  if (named >= 0) await page.locator("#frames > g").nth(named).click();
  const zoomed = await page.evaluate(() => !document.getElementById("unzoom")?.classList.contains("hide"));
  await page.screenshot({ path: `${out}/flamegraph-zoomed.png` });
  // Decode the first screenshot on a blank page and measure it.
  const blank = await browser.newPage();
  const pixels = await blank.evaluate(async (b64) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.width; canvas.height = img.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, img.width, img.height).data;
    let coloured = 0;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      // Saturated: a frame's fill, not the background gradient, text or white.
      if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
      colours.add((r >> 4) << 8 | (g >> 4) << 4 | (b >> 4));
    }
    return { width: img.width, height: img.height, coloured, colours: colours.size };
  }, png.toString("base64"));
  const seen = { contentType, frames: frames.length, hasFrame: named >= 0, title, zoomed, pixels, consoleErrors };
  console.log(JSON.stringify(seen));
  if (!contentType?.startsWith("image/svg+xml")) failures.push(`content-type ${contentType}`);
  if (!seen.hasFrame) failures.push(`no frame named ${frame}: ${frames.slice(0, 20).join(" | ")}`);
  if (!zoomed) failures.push("clicking a frame did not zoom");
  // At least 1% of the picture is frame colour, in more than a handful of shades.
  if (pixels.coloured < pixels.width * pixels.height / 100 || pixels.colours < 8) failures.push("the screenshot is blank");
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
