// The web console (GET /) and the API docs (GET /docs) in a real headless
// Chromium (Debian's `chromium`, driven by playwright-core), against the
// real server: `embedd serve` on tests/fixtures/tiny-f16 with an API key
// and a learner that trains at once on a tiny budget.
//
//   node --test tests/browser/          (from the repository root)
//
// EMBEDD_BIN: the binary (default build/embedd); CHROMIUM: the browser
// (default /usr/bin/chromium). Skips, saying why, without a browser.
// Run by tests/test_browser.c in `make test`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.EMBEDD_BIN || path.join(ROOT, "build/embedd");
const BROWSER = process.env.CHROMIUM || "/usr/bin/chromium";
const KEY = "browser-test-key";
const ITEMS = [
  "the cat sleeps on the warm windowsill",
  "a recipe for bread with flour, water and salt",
  "the train to the city leaves at nine",
  "stars and planets seen through a telescope",
  "a guitar with six strings and a wooden body",
  "rain is expected over the mountains tomorrow",
  "the library opens its doors at eight",
  "children play football in the park",
];

let server, base, browser;
let serverLog = "";

// Starts the server; resolves with its base URL once it says "listening on".
function startServer() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("EMBEDD_")));
  const args = ["serve", "--model", path.join(ROOT, "tests/fixtures/tiny-f16"), "--host", "127.0.0.1",
    "--port", "0", "--api-key", KEY, "--train-min-samples", "8", "--train-batch-size", "4",
    "--publish-every", "5", "--publish", "auto", "--train-max-cpu", "90"];
  server = spawn(BIN, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no 'listening on' in 15 s:\n" + serverLog)), 15000);
    server.stderr.on("data", (d) => {
      serverLog += d;
      const m = /listening on (http:\/\/[0-9.]+:[0-9]+)/.exec(serverLog);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.on("exit", (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}):\n${serverLog}`)); });
  });
}

async function call(method, route, body, key = KEY) {
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch(base + route, { method, headers, body: body && JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

before(async () => {
  base = await startServer();
  const up = await call("POST", "/items", { items: ITEMS.map((text, id) => ({ id: id + 1, text })) });
  assert.equal(up.status, 200, JSON.stringify(up.body));
  // 120 texts: about 5% are held out (by hash) and the gate needs 2 of them
  const texts = Array.from({ length: 120 }, (_, i) => `unlabelled training sentence ${i} about ${ITEMS[i % 8]}`);
  const s = await call("POST", "/train/samples", { texts });
  assert.equal(s.status, 200, JSON.stringify(s.body));
});

after(async () => {
  if (browser) await browser.close();
  if (server && server.exitCode === null) {
    const gone = new Promise((r) => server.on("exit", (code, signal) => r({ code, signal })));
    server.kill("SIGTERM");
    // a clean stop (under ASan also: no leak or error report)
    const { code, signal } = await gone;
    assert.equal(code, 0, `the server stopped with ${code ?? signal}:\n${serverLog.slice(-3000)}`);
  }
});

async function openBrowser(t) {
  if (!existsSync(BROWSER)) {
    t.skip(`no browser at ${BROWSER} (apt-get install chromium, or set CHROMIUM)`);
    return null;
  }
  if (!browser) {
    // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    browser = await chromium.launch({ executablePath: BROWSER, headless: true, args: ["--no-sandbox"] });
  }
  return browser.newPage();
}

test("GET / answers JSON to a client, without a key", async () => {
  const res = await fetch(base + "/", { headers: { Accept: "application/json" } });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.title, "embedd");
  assert.match(body.version, /^\d+\.\d+\.\d+/);
  const hist = await call("GET", "/train/history", undefined, null);
  assert.equal(hist.status, 401, "/train/history needs the key");
});

test("the console asks for the key, then shows the model, the curve and search results", { timeout: 90000 }, async (t) => {
  const page = await openBrowser(t);
  if (!page) return;
  const info = await call("GET", "/info");
  await page.goto(base + "/");
  // the page itself loads without a key; its API calls answer 401
  await page.locator("#keybox.show").waitFor({ timeout: 10000 });
  await page.fill("#key", KEY);
  await page.click("#keyform button");
  await page.waitForFunction((name) => document.getElementById("model").textContent === name,
    info.body.model_id, { timeout: 10000 });
  assert.equal(await page.textContent("#precision"), info.body.precision);

  // training runs on the buffered texts: the chart fills with points and
  // gate marks (polled every 2 s)
  await page.waitForFunction(() => Number(document.getElementById("curve").dataset.points) >= 5 &&
    Number(document.getElementById("curve").dataset.gates) >= 1, null, { timeout: 60000 });
  const points = await page.locator("#curve polyline.loss").getAttribute("points");
  assert.ok(points.split(" ").length >= 5, "the loss line has its points: " + points);
  assert.ok(await page.locator("#curve line.gate").count() >= 1, "a gate decision is marked");
  assert.ok(await page.locator("#gates tbody tr").count() >= 1, "the gate table lists decisions");
  assert.ok(await page.locator("#versions tbody tr").count() >= 1, "the versions table is filled");

  // a search for a stored text returns that item first, with its text and score
  await page.fill("#q", ITEMS[3]);
  await page.fill("#limit", "3");
  await page.click("#search button");
  const first = page.locator("#results tbody tr").first();
  await first.waitFor({ timeout: 10000 });
  const cells = await first.locator("td").allTextContents();
  assert.equal(cells[2], ITEMS[3], "the best hit is the stored item: " + cells.join(" | "));
  const score = Number(cells[0]);
  assert.ok(score > 0.9 && score <= 1.0001, "its score: " + cells[0]);
  assert.equal(await page.locator("#results tbody tr").count(), 3);
  await page.close();
});

test("/docs lists every operation of /openapi.json", { timeout: 30000 }, async (t) => {
  const page = await openBrowser(t);
  if (!page) return;
  const doc = await (await fetch(base + "/openapi.json")).json();
  const want = [];
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const m of Object.keys(item)) want.push(m.toUpperCase() + " " + p);
  }
  await page.goto(base + "/docs");
  await page.locator("section.op").first().waitFor({ timeout: 10000 });
  const shown = await page.$$eval("section.op", (els) => els.map((e) => e.dataset.method + " " + e.dataset.path));
  assert.deepEqual(shown.slice().sort(), want.slice().sort());
  assert.ok(shown.includes("GET /train/history") && shown.includes("POST /similar"));
  // a schema is rendered: /similar's request fields
  const similar = await page.textContent("#post--similar");
  assert.match(similar, /score_threshold/);
  await page.close();
});
