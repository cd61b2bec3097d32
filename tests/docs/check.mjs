// Checks that the API docs keyhouse serves itself render in headless Chromium with no network
// access beyond the server under test: Swagger UI at /docs (redirects to /docs/) and ReDoc at
// /redoc (which loads /redoc/redoc.standalone.js and the spec from /openapi.json).
//
// Usage:
//   node tests/docs/check.mjs <base-url> <screenshot-dir>
//   e.g. node tests/docs/check.mjs http://127.0.0.1:8084 /tmp/shots
//
// Every request the pages make is routed: only the base URL's origin (which must be a loopback
// address) is let through; anything else is aborted and listed in "blocked_requests".
// For each page it waits until the operations are rendered, saves a full-page screenshot
// (<screenshot-dir>/docs.png, <screenshot-dir>/redoc.png) and checks that the rendered
// operations show each expected path. It prints one JSON line to stdout:
//   {"docs":{"operations":N,"missing":[..],"screenshot":".."},"redoc":{..},"blocked_requests":[..]}
// (each page also carries "url", "paths" and "page_errors").
//
// Exit 0 only if both pages rendered, no expected path is missing, no page raised a JavaScript
// error and no blocked or failed request was one the page needs to work (document, script,
// stylesheet, XHR/fetch). Blocked images and fonts (ReDoc's "API docs by Redocly" logo is an
// image on a CDN) are reported but do not fail the check: the rendering checks already prove the
// page works without them. Otherwise: one line on stderr and exit 1 (the JSON line is still
// printed when the pages were reached).
//
// Chromium is Debian's (/usr/bin/chromium, package "chromium"); Playwright's own browser
// downloads are not used. CHROMIUM=/path/to/chromium overrides the executable.

import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { chromium } from "playwright-core";

const EXPECTED_PATHS = [
  "/api/v1/account/uc-api-keys",
  "/api/v1/account/uc-api-keys/{key_id}/regenerate",
  "/api/v1/admin/platform-keys",
  "/api/v1/admin/platform-keys/{name}/decrypted",
  "/api/v1/admin/audit-events",
];

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const OVERALL_TIMEOUT_MS = 60_000;
const RENDER_TIMEOUT_MS = 15_000;
// Resource types a page needs to work: a blocked or failed one of these fails the check.
const ESSENTIAL_TYPES = new Set(["document", "script", "stylesheet", "xhr", "fetch"]);
const LOOPBACK_HOSTS = new Set(["localhost", "[::1]"]);

function fail(message) {
  process.stderr.write(`docs check failed: ${message}\n`);
  process.exit(1);
}

function isLoopback(url) {
  return LOOPBACK_HOSTS.has(url.hostname) || /^127(\.\d{1,3}){3}$/.test(url.hostname);
}

const [baseArg, shotArg] = process.argv.slice(2);
if (!baseArg || !shotArg) {
  fail("usage: node tests/docs/check.mjs <base-url> <screenshot-dir>");
}
let base;
try {
  base = new URL(baseArg);
} catch {
  fail(`not a URL: ${baseArg}`);
}
if (base.protocol !== "http:" || !isLoopback(base)) {
  fail(`base URL must be http:// on a loopback address (127.0.0.1, localhost, [::1]): ${baseArg}`);
}
const origin = base.origin;
const shotDir = resolve(shotArg);

// Swagger UI: one `.opblock` per operation, its path in `.opblock-summary-path[data-path]`.
// ReDoc: each operation's right-hand panel has a button with `span.http-verb` followed by a
// span holding the path; that text is visible without expanding anything.
const PAGES = [
  {
    name: "docs",
    path: "/docs",
    finalPath: "/docs/",
    ready: ".opblock",
    collect: () =>
      [...document.querySelectorAll(".opblock")].map((op) => {
        const pathEl = op.querySelector(".opblock-summary-path");
        const text = pathEl ? pathEl.getAttribute("data-path") || pathEl.innerText : "";
        const method = op.querySelector(".opblock-summary-method");
        return {
          method: method ? method.innerText.trim().toLowerCase() : "",
          path: text.replace(/\u200b/g, "").trim(),
        };
      }),
  },
  {
    name: "redoc",
    path: "/redoc",
    finalPath: "/redoc",
    ready: "button > .http-verb",
    collect: () =>
      [...document.querySelectorAll("button > .http-verb")].map((verb) => ({
        method: verb.innerText.trim().toLowerCase(),
        path: (verb.nextElementSibling ? verb.nextElementSibling.innerText : "")
          .replace(/\u200b/g, "")
          .trim(),
      })),
  },
];

const blocked = [];
const failed = [];
let currentPage = "";
let browserContext;
let profileDir;

async function cleanup() {
  if (browserContext) await browserContext.close().catch(() => {});
  if (profileDir) await rm(profileDir, { recursive: true, force: true }).catch(() => {});
}

let timedOut = false;
const timer = setTimeout(() => {
  timedOut = true;
  const where = currentPage ? ` while checking ${currentPage}` : "";
  process.stderr.write(`docs check failed: timed out after ${OVERALL_TIMEOUT_MS / 1000} s${where}\n`);
  cleanup().finally(() => process.exit(1));
}, OVERALL_TIMEOUT_MS);

async function checkPage(spec) {
  const page = await browserContext.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err && err.message ? err.message : err)));
  currentPage = spec.name;

  const response = await page.goto(origin + spec.path, { waitUntil: "load", timeout: RENDER_TIMEOUT_MS });
  const finalUrl = page.url();
  const problems = [];
  if (!response || !response.ok()) {
    problems.push(`${spec.path} answered ${response ? response.status() : "nothing"}`);
  }
  if (new URL(finalUrl).pathname !== spec.finalPath) {
    problems.push(`${spec.path} ended at ${finalUrl}, expected ${spec.finalPath}`);
  }

  let rendered = true;
  try {
    await page.waitForSelector(spec.ready, { state: "visible", timeout: RENDER_TIMEOUT_MS });
    // Wait until the number of rendered operations stops changing.
    let last = -1;
    for (let i = 0; i < 20; i++) {
      const n = await page.locator(spec.ready).count();
      if (n === last) break;
      last = n;
      await page.waitForTimeout(300);
    }
  } catch {
    rendered = false;
    problems.push(`${spec.name}: no operations rendered (no "${spec.ready}" within ${RENDER_TIMEOUT_MS / 1000} s)`);
  }

  const ops = rendered ? await page.evaluate(spec.collect) : [];
  const visibleText = (await page.evaluate(() => document.body.innerText)).replace(/\u200b/g, "");
  const shownPaths = new Set(ops.map((op) => op.path));
  // A path counts only if a rendered operation shows it and it is in the page's visible text.
  const missing = EXPECTED_PATHS.filter((p) => !shownPaths.has(p) || !visibleText.includes(p));
  if (missing.length) problems.push(`${spec.name}: missing ${missing.join(", ")}`);

  const screenshot = join(shotDir, `${spec.name}.png`);
  await page.screenshot({ path: screenshot, fullPage: true });
  if (pageErrors.length) problems.push(`${spec.name}: page errors: ${pageErrors.join(" | ")}`);
  await page.close();

  return {
    result: {
      url: finalUrl,
      operations: ops.length,
      paths: [...shownPaths].sort(),
      missing,
      screenshot,
      page_errors: pageErrors,
    },
    problems,
  };
}

async function main() {
  await mkdir(shotDir, { recursive: true });
  profileDir = await mkdtemp(join(tmpdir(), "keyhouse-docs-profile-"));
  try {
    browserContext = await chromium.launchPersistentContext(profileDir, {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      serviceWorkers: "block",
    });
  } catch (err) {
    await cleanup();
    fail(`could not start Chromium (apt-get install chromium): ${String(err.message).split("\n")[0]}`);
  }

  await browserContext.route("**/*", (route) => {
    const req = route.request();
    const url = req.url();
    let allowed = false;
    try {
      const u = new URL(url);
      allowed = u.origin === origin || u.protocol === "data:" || u.protocol === "blob:";
    } catch {}
    if (allowed) return route.continue();
    const type = req.resourceType();
    blocked.push({ page: currentPage, type, url, fatal: ESSENTIAL_TYPES.has(type) });
    return route.abort("blockedbyclient");
  });
  // Same-origin requests that failed or answered with an error (a missing asset).
  browserContext.on("requestfailed", (req) => {
    if (!req.url().startsWith(origin + "/")) return;
    failed.push({ page: currentPage, type: req.resourceType(), url: req.url(), error: req.failure()?.errorText ?? "" });
  });
  browserContext.on("response", (res) => {
    const req = res.request();
    if (!req.url().startsWith(origin + "/") || res.status() < 400) return;
    failed.push({ page: currentPage, type: req.resourceType(), url: req.url(), error: `HTTP ${res.status()}` });
  });

  const output = {};
  const problems = [];
  for (const spec of PAGES) {
    if (timedOut) return;
    try {
      const { result, problems: p } = await checkPage(spec);
      output[spec.name] = result;
      problems.push(...p);
    } catch (err) {
      output[spec.name] = { error: String(err.message).split("\n")[0] };
      problems.push(`${spec.name}: ${String(err.message).split("\n")[0]}`);
    }
  }
  output.blocked_requests = blocked;
  if (failed.length) output.failed_requests = failed;

  for (const b of blocked.filter((b) => b.fatal)) {
    problems.push(`${b.page}: blocked ${b.type} request to ${b.url}`);
  }
  for (const f of failed.filter((f) => ESSENTIAL_TYPES.has(f.type))) {
    problems.push(`${f.page}: ${f.type} ${f.url} failed: ${f.error}`);
  }

  if (timedOut) return;
  clearTimeout(timer);
  await cleanup();
  process.stdout.write(JSON.stringify(output) + "\n");
  if (problems.length) fail(problems.join("; "));
}

main().catch(async (err) => {
  if (timedOut) return;
  clearTimeout(timer);
  await cleanup();
  fail(String(err && err.message ? err.message : err).split("\n")[0]);
});
