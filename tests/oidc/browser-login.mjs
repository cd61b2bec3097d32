// Drives keyhouse's browser login in headless Chromium: opens <keyhouse>/auth/login?next=<next>,
// signs in on the provider's own login page (any password) and consents, and follows the browser
// back through /auth/callback to <next> (or to the callback's refusal). It prints one JSON line on stdout:
//   {"callback_url", "login_cookie", "final_url", "final_status", "body", "cookies": [...]}
// `callback_url` is where the provider sent the browser, `login_cookie` the sign-in cookie the
// browser held then (so that a test can replay the callback), `cookies` every cookie the browser
// holds for keyhouse at the end, with its attributes.
//
// Chromium is Debian's (/usr/bin/chromium); CHROMIUM=/path/to/chromium overrides it.
// Usage: node browser-login.mjs <keyhouse-base-url> <login-name> <next-path>
import { chromium } from 'playwright-core';

const [base, login, next] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  let callbackUrl = null;
  page.on('request', (req) => {
    if (req.url().startsWith(`${base}/auth/callback`)) callbackUrl = req.url();
  });
  await page.goto(`${base}/auth/login?next=${encodeURIComponent(next)}`);
  // The provider's development login form, then its consent page.
  await page.fill('input[name=login]', login);
  await page.fill('input[name=password]', 'any password');
  await page.click('button[type=submit]');
  await page.waitForSelector('input[name=prompt][value=consent]', { state: 'attached' });
  const held = await context.cookies(`${base}/auth/callback`);
  const loginCookie = held.find((c) => c.name === 'keyhouse_login')?.value ?? null;
  // Where keyhouse leaves the browser: <next>, or the callback's own refusal.
  const landed = page.waitForResponse((res) => res.url().startsWith(base) && (res.status() < 300 || res.status() >= 400));
  await page.click('button[type=submit]');
  const final = await landed;
  const cookies = (await context.cookies(base)).filter((c) => ['session_token', 'csrf_token', 'keyhouse_login'].includes(c.name));
  process.stdout.write(`${JSON.stringify({
    callback_url: callbackUrl,
    login_cookie: loginCookie,
    final_url: final.url(),
    final_status: final.status(),
    body: await final.text(),
    cookies,
  })}\n`);
} finally {
  await browser.close();
}
