// Drives keyhouse's web console in Chromium against a running keyhouse.
//
//   node console.mjs <base-url> <screenshot-dir>
//
// Env: USER_TOKEN, ADMIN_TOKEN (session tokens), BYOK_PROVIDER (a provider id), BYOK_GOOD_KEY (a
// key the provider accepts), CHROMIUM (default /usr/bin/chromium).
//
// Prints JSON lines on stdout: {"step":"created",...}, {"step":"revoked",...} and
// {"step":"updated","name":"openrouter","version":N} (the harness then reports version N synced
// to LiteLLM), each answered by one line on stdin ("ok" to go on), then {"step":"done",...}. On a failure it saves failure.png,
// prints the reason on stderr and exits 1.
import { chromium } from "playwright-core";
import axe from "axe-core";
import { createInterface } from "node:readline";
import { gzipSync } from "node:zlib";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const TIMEOUT = 15_000;
const [base, shotDir] = process.argv.slice(2);
if (!base || !shotDir) {
  console.error("usage: node console.mjs <base-url> <screenshot-dir>");
  process.exit(2);
}
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const origin = new URL(base).origin;
const url = (path) => new URL(path, base).href;
mkdirSync(shotDir, { recursive: true });

// stdin, one line at a time.
const lines = [];
const waiters = [];
const rl = createInterface({ input: process.stdin });
rl.on("line", (l) => (waiters.length ? waiters.shift()(l) : lines.push(l)));
rl.on("close", () => waiters.splice(0).forEach((w) => w(null)));
function readLine(ms) {
  if (lines.length) return Promise.resolve(lines.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer on stdin within ${ms / 1000} s`)), ms);
    waiters.push((l) => {
      clearTimeout(t);
      resolve(l);
    });
  });
}
async function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
  const answer = await readLine(60_000);
  if (answer === null) throw new Error(`stdin closed after ${obj.step}`);
  if (answer.trim() !== "ok") throw new Error(`the harness answered ${JSON.stringify(answer)} after ${obj.step}`);
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const violations = [];
const pages = [];
const screenshots = [];
const pageErrors = [];

let browser;
let page;

async function axeCheck(name) {
  const hasAxe = await page.evaluate(() => typeof window.axe !== "undefined");
  // A <script> tag would be refused by the console's CSP; evaluate the source instead.
  if (!hasAxe) await page.evaluate(axe.source);
  const result = await page.evaluate(() =>
    window.axe.run(document, { resultTypes: ["violations"] }),
  );
  for (const v of result.violations) {
    if (v.impact !== "serious" && v.impact !== "critical") continue;
    violations.push({
      page: name,
      id: v.id,
      impact: v.impact,
      help: v.help,
      targets: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
    });
  }
}

async function shots(name) {
  for (const [w, h] of [
    [1280, 800],
    [390, 844],
  ]) {
    await page.setViewportSize({ width: w, height: h });
    await page.waitForTimeout(150);
    const file = `${name}-${w}.png`;
    await page.screenshot({ path: join(shotDir, file), fullPage: true });
    screenshots.push(file);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

/** A page visited: axe-checked and photographed at both widths. */
async function visited(name) {
  await axeCheck(name);
  await shots(name);
  pages.push(name);
}

async function heading(text) {
  await page.getByRole("heading", { level: 1, name: text }).waitFor({ timeout: TIMEOUT });
}

async function noAlert(where) {
  const alerts = page.locator(".error[role=alert]");
  const n = await alerts.count();
  if (n) throw new Error(`${where}: the page shows an error: ${await alerts.first().innerText()}`);
}

async function signIn(token) {
  await heading("Sign in to keyhouse");
  await page.getByLabel("Session token").fill(token);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
}

/** Presses Tab until `locator` has focus, at most `max` times. */
async function tabTo(locator, what, max = 40) {
  for (let i = 0; i < max; i++) {
    if (await locator.evaluate((el) => el === document.activeElement)) return;
    await page.keyboard.press("Tab");
  }
  throw new Error(`Tab never reached ${what}`);
}

async function main() {
  const userToken = env("USER_TOKEN");
  const adminToken = env("ADMIN_TOKEN");
  const byokProvider = env("BYOK_PROVIDER");
  const byokKey = env("BYOK_GOOD_KEY");

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.setDefaultNavigationTimeout(TIMEOUT);
  page.on("pageerror", (e) => pageErrors.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy|Refused to/i.test(m.text()))
      pageErrors.push(`CSP: ${m.text()}`);
  });

  // 1. Signed out, /keys lands on sign-in. The first load's scripts and styles are measured.
  const fetched = [];
  const onResponse = async (res) => {
    const type = res.request().resourceType();
    if ((type === "script" || type === "stylesheet") && res.url().startsWith(origin)) {
      try {
        fetched.push({ url: res.url(), gzip: gzipSync(await res.body()).length });
      } catch {
        // a body that is gone does not count
      }
    }
  };
  page.on("response", onResponse);
  await page.goto(url("/keys"));
  await heading("Sign in to keyhouse");
  await page.locator("html[data-ready]").waitFor({ state: "attached" });
  page.off("response", onResponse);
  const u = new URL(page.url());
  check(u.pathname === "/sign-in", `signed out, /keys went to ${u.pathname}, not /sign-in`);
  check(u.searchParams.get("next") === "/keys", `sign-in's next is ${u.searchParams.get("next")}, not /keys`);
  const bundleGzip = fetched.reduce((a, f) => a + f.gzip, 0);
  check(fetched.length > 0, "the first load fetched no script or stylesheet");
  const loadMs = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const first = performance.getEntriesByName("keyhouse:first-view")[0];
    return {
      dom_interactive: Math.round(nav.domInteractive),
      dom_content_loaded: Math.round(nav.domContentLoadedEventEnd),
      first_view: first ? Math.round(first.startTime) : null,
    };
  });
  check(
    (await page.evaluate(() => [localStorage.length, sessionStorage.length])).every((n) => n === 0),
    "the sign-in page stored something in web storage",
  );
  await visited("sign-in");
  await signIn(userToken);
  await heading("My keys");
  check(new URL(page.url()).pathname === "/keys", `after sign-in the page is ${page.url()}, not /keys`);
  check(!page.url().includes(userToken), "the session token is in the URL");
  const held = await page.evaluate(() => [document.cookie, JSON.stringify({ ...localStorage }), JSON.stringify({ ...sessionStorage })]);
  check(!held.some((s) => s.includes(userToken)), "the session token is readable by the page (cookie or web storage)");
  await page.getByRole("button", { name: "Create key" }).waitFor();
  await page.locator("table.cards, .empty").first().waitFor();
  await noAlert("My keys");
  await visited("keys");

  // 2. Create a key by keyboard alone, copy it with the Copy button, compare with the clipboard.
  const create = page.getByRole("button", { name: "Create key" });
  await create.focus();
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog", { name: "Create an API key" });
  await dialog.waitFor();
  const name = `console check ${Date.now()}`;
  const nameInput = dialog.getByLabel("Name");
  check(await nameInput.evaluate((el) => el === document.activeElement), "the create dialog did not focus Name");
  await page.keyboard.type(name);
  await visited("create-dialog");
  const submit = dialog.getByRole("button", { name: "Create key" });
  await tabTo(submit, "the dialog's Create key button");
  await page.keyboard.press("Enter");
  const issued = page.getByRole("dialog", { name: "Your new API key" });
  await issued.waitFor();
  const secretText = (await issued.locator("[data-secret]").innerText()).trim();
  check(/^uc_[0-9a-f]{64}$/.test(secretText), `the dialog shows ${secretText.length} characters, not a uc_ key`);
  const keyId = await issued.locator("[data-issued-key-id]").getAttribute("data-issued-key-id");
  const copy = issued.getByRole("button", { name: "Copy" });
  await tabTo(copy, "the Copy button");
  await page.keyboard.press("Enter");
  await issued.getByText("Copied to the clipboard.").waitFor();
  const clip = await page.evaluate(() => navigator.clipboard.readText());
  check(clip === secretText, "the clipboard does not hold the key the dialog shows");
  await report({ step: "created", key_id: keyId, api_key: secretText });
  await page.keyboard.press("Escape");
  await issued.waitFor({ state: "detached" });
  check((await page.locator("[data-secret]").count()) === 0, "the secret is still in the page after closing");
  const row = page.locator(`tr[data-key-id="${keyId}"]`);
  await row.waitFor();
  check((await row.locator(".badge").textContent()).trim() === "active", "the new key is not listed as active");

  // 3. Revoke it, with the confirmation.
  await row.getByRole("button", { name: /^Revoke/ }).click();
  const confirm = page.getByRole("dialog", { name: "Revoke this key?" });
  await confirm.getByRole("button", { name: "Revoke key" }).click();
  await confirm.waitFor({ state: "detached" });
  await row.locator(".badge", { hasText: "revoked" }).waitFor();
  await report({ step: "revoked", key_id: keyId });

  // 4. The key's usage page.
  await row.getByRole("link", { name: /^Usage/ }).click();
  await heading(`Usage of ${name}`);
  await page.locator(".chart-box canvas").waitFor();
  await page.getByText("Requests in this period", { exact: true }).waitFor();
  await noAlert("Key usage");
  await page.getByLabel("Per day").check();
  await page.getByText(/Requests per day, /).waitFor();
  await page.locator(".chart-box canvas").waitFor();
  await noAlert("Key usage per day");
  await visited("key-usage");

  // 5. Provider keys: add one, test it.
  await page.getByRole("link", { name: "Provider keys" }).click();
  await heading("Provider keys");
  await page.locator(".card-list, .empty").first().waitFor();
  await noAlert("Provider keys");
  await visited("providers");
  await page.getByRole("button", { name: "Add provider key" }).click();
  const put = page.getByRole("dialog", { name: /provider key|Replace your/ });
  await put.getByLabel("Provider").selectOption(byokProvider);
  await put.getByLabel("API key").fill(byokKey);
  await put.getByLabel("Label (optional)").fill("console check");
  await put.getByRole("button", { name: "Save key" }).click();
  await put.waitFor({ state: "detached" });
  const card = page.locator(`[data-provider="${byokProvider}"]`);
  await card.waitFor();
  await card.getByRole("button", { name: /^Test/ }).click();
  const result = card.locator(".test-result");
  await result.getByText(/Result: valid/).waitFor();
  const resultText = await result.innerText();
  check(/\d+ ms/.test(resultText), `the test result shows no latency: ${resultText}`);

  // 6. As a user, the admin pages say "Admins only", with no admin links and no admin RPC.
  const adminCalls = [];
  const onRequest = (r) => r.url().includes("/keyhouse.v1.PlatformKeyService/") && adminCalls.push(r.url());
  page.on("request", onRequest);
  for (const [path, shot] of [
    ["/admin/platform-keys", "admin-only"],
    ["/admin/audit", "admin-only-audit"],
  ]) {
    await page.goto(url(path));
    await heading("Admins only");
    const nav = page.getByRole("navigation", { name: "Main" });
    await nav.getByRole("link", { name: "My keys" }).waitFor();
    for (const l of ["Platform keys", "Audit log"])
      check((await nav.getByRole("link", { name: l }).count()) === 0, `a user sees the ${l} link`);
    if (shot === "admin-only") await visited(shot);
  }
  page.off("request", onRequest);
  check(adminCalls.length === 0, `the admin-only page called ${adminCalls.join(", ")}`);

  // 7. Sign out, sign in as an admin: platform keys and the audit log.
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(adminToken);
  const nav = page.getByRole("navigation", { name: "Main" });
  await nav.getByRole("link", { name: "Platform keys" }).click();
  await heading("Platform keys");
  const or = page.locator('[data-platform-key="openrouter"]');
  await or.waitFor();
  await noAlert("Platform keys");
  await visited("platform-keys");
  const hex = (seed) => Array.from({ length: 64 }, (_, i) => ((i * 7 + seed) % 16).toString(16)).join("");
  const v1 = `sk-or-v1-${hex(3)}`;
  const v2 = `sk-or-v1-${hex(11)}`;
  // The version the first update stores (1 on a fresh database) is the one rolled back to.
  let first = null;
  let last = null;
  for (const value of [v1, v2]) {
    await or.getByRole("button", { name: /^Update/ }).click();
    const upd = page.getByRole("dialog", { name: /^Update/ });
    await upd.getByLabel("New value").fill(value);
    await upd.getByRole("button", { name: "Save new version" }).click();
    await upd.waitFor({ state: "detached" });
    await or.locator("code", { hasText: value.slice(-4) }).first().waitFor();
    await noAlert("Platform key update");
    const version = (await or.locator("[data-version]").textContent()).trim();
    first ??= version.replace(/^v/, "");
    last = version.replace(/^v/, "");
  }
  await or.getByRole("button", { name: /^Versions/ }).click();
  const versions = page.getByRole("dialog", { name: /^Versions of/ });
  await versions.locator(`tr[data-version="${first}"]`).waitFor();
  await visited("versions");
  await versions.locator(`tr[data-version="${first}"]`).getByRole("button", { name: /^Roll back/ }).click();
  const rb = page.getByRole("dialog", { name: `Roll back to version ${first}?` });
  await rb.getByRole("button", { name: `Roll back to v${first}` }).click();
  await rb.waitFor({ state: "detached" });
  await page.getByRole("status").filter({ hasText: `rolled back to v${first}` }).waitFor();
  const again = page.getByRole("dialog", { name: /^Versions of/ });
  const current = again.locator("tbody tr", { has: page.locator(".badge", { hasText: "current" }) });
  await current.locator("code", { hasText: v1.slice(-4) }).waitFor();
  await again.getByRole("button", { name: "Close", exact: true }).first().click();
  await again.waitFor({ state: "detached" });

  // 8. The LiteLLM sync agent's last applied change: the harness reports the current version as
  // synced, and the card says so after a reload.
  const stored = or.locator(`[data-version]:not([data-version="${last}"])`);
  await stored.waitFor();
  const syncedVersion = Number(await stored.getAttribute("data-version"));
  check(syncedVersion > Number(last), `after the rollback the card shows version ${syncedVersion}`);
  await or.getByText("Not synced").waitFor();
  await report({ step: "updated", name: "openrouter", version: syncedVersion });
  await page.reload();
  await heading("Platform keys");
  await or.locator("[data-synced]", { hasText: `Synced to LiteLLM: version ${syncedVersion},` }).waitFor();
  await noAlert("Platform keys after the sync");

  // 9. Test refreshes the server's health (the provider stub refuses the rolled-back value), and
  // the key's health history holds the manual test.
  await or.locator('[data-health="unknown"]').waitFor();
  await or.getByRole("button", { name: /^Test/ }).click();
  const unhealthy = or.locator('[data-health="unhealthy"]');
  await unhealthy.waitFor();
  const healthText = await unhealthy.innerText();
  check(/Unhealthy/.test(healthText) && /tested .*\d+ ms/.test(healthText), `the card's health reads ${healthText}`);
  check(/rejected the key \(auth\)/.test(healthText), `the card's health names no error class: ${healthText}`);
  await or.getByRole("link", { name: /^Health history/ }).click();
  await heading("Health history of OpenRouter");
  check(new URL(page.url()).pathname === "/admin/platform-keys/openrouter/health", `the history is at ${page.url()}`);
  const checks = page.locator("table.health tbody tr");
  await checks.first().waitFor();
  check((await checks.count()) === 1, `the history holds ${await checks.count()} rows, not the one manual test`);
  const row1 = checks.first();
  check((await row1.getAttribute("data-trigger")) === "manual", "the test is not recorded as manual");
  check((await row1.getAttribute("data-status")) === "unhealthy", "the test is not recorded as unhealthy");
  const rowText = await row1.innerText();
  check(/401/.test(rowText) && /\d+ ms/.test(rowText) && /auth/.test(rowText), `the history row reads ${rowText}`);
  await noAlert("Health history");
  await visited("platform-health");
  await nav.getByRole("link", { name: "Platform keys" }).click();
  await heading("Platform keys");
  await or.waitFor();

  await page.clock.install();
  await or.getByRole("button", { name: /^Reveal/ }).click();
  const reveal = page.getByRole("dialog", { name: /^Reveal/ });
  await reveal.getByText("This reveal is audited.").waitFor();
  await reveal.getByLabel("Reason").fill("console check: compare with the rolled-back version");
  await reveal.getByRole("button", { name: "Reveal secret" }).click();
  const shown = reveal.locator("[data-secret]");
  await shown.waitFor();
  check((await shown.innerText()).trim() === v1, "the revealed secret is not version 1's value");
  await page.clock.fastForward(30_000);
  await reveal.getByText("hidden again after 30 seconds").waitFor();
  check((await page.locator("[data-secret]").count()) === 0, "the secret is still in the page after 30 s");
  await reveal.getByRole("button", { name: "Close", exact: true }).last().click();
  await reveal.waitFor({ state: "detached" });

  await nav.getByRole("link", { name: "Audit log" }).click();
  await heading("Audit log");
  await page.getByLabel("Action").fill("platform_key.rollback");
  await page.getByRole("button", { name: "Apply filters" }).click();
  const rows = page.locator("table.audit tbody tr");
  await page.locator('table.audit tbody tr[data-action="platform_key.rollback"]').first().waitFor();
  const actions = await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-action")));
  check(actions.every((a) => a === "platform_key.rollback"), `the filtered log shows ${actions.join(", ")}`);
  await noAlert("Audit log");
  await visited("audit");

  check(pageErrors.length === 0, pageErrors.join("; "));
  await browser.close();
  process.stdout.write(
    JSON.stringify({
      step: "done",
      violations,
      bundle_gzip_bytes: bundleGzip,
      load_ms: loadMs,
      pages,
      screenshots,
    }) + "\n",
  );
  rl.close();
  process.exit(0);
}

main().catch(async (e) => {
  try {
    if (page) await page.screenshot({ path: join(shotDir, "failure.png"), fullPage: true });
  } catch {
    // the page may be gone
  }
  console.error(`console check failed: ${e && e.stack ? e.stack : e}`);
  if (pageErrors.length) console.error(pageErrors.join("\n"));
  try {
    await browser?.close();
  } catch {
    // ignore
  }
  process.exit(1);
});
