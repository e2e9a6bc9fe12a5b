// The dashboard in a real browser: headless Debian chromium driven by playwright-core.
//
// Started by tests/it/ui.rs (`dashboard_works_in_a_real_browser`), which runs the gateway and a
// webhook receiver that fails the first two requests. Protocol with the Rust side, on stdout:
// this script prints `READY_FOR_MAIL` once the messages page is open; the Rust test then sends a
// mail with subject $MXHOOK_SUBJECT to agent@example.com; and `READY_FOR_INBOX_MAIL` once it has
// created the inbox browser-made (webhook $MXHOOK_RECEIVER), for a mail to browser-made@example.com.
// Exits 0 only if every step passed.
//
// Env: MXHOOK_URL (http://host:port), MXHOOK_KEY (admin key), MXHOOK_SUBJECT, MXHOOK_RECEIVER,
// MXHOOK_SCREENSHOTS (directory for the screenshots), CHROMIUM (default /usr/bin/chromium).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.MXHOOK_URL;
const key = process.env.MXHOOK_KEY;
const subject = process.env.MXHOOK_SUBJECT;
const shots = process.env.MXHOOK_SCREENSHOTS;
const receiverUrl = process.env.MXHOOK_RECEIVER;
if (!base || !key || !subject || !shots) {
  console.error("MXHOOK_URL, MXHOOK_KEY, MXHOOK_SUBJECT and MXHOOK_SCREENSHOTS are required");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

// Generous: a loaded 2-core CI machine.
const SOON = 30_000;

function step(name) {
  console.log(`step: ${name}`);
}

function fail(message) {
  throw new Error(message);
}

async function noSidewaysScroll(page, what) {
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  if (overflow > 0) fail(`${what} scrolls sideways at phone width by ${overflow}px`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  page.on("console", (msg) => {
    // A CSP violation shows up as a console error; the dashboard must cause none.
    if (msg.type() === "error") errors.push(msg.text());
  });
  page.on("dialog", (dialog) => dialog.accept());

  step("the login page, then log in with the admin key");
  await page.goto(`${base}/ui/messages`);
  if (!page.url().includes("/ui/login")) fail(`expected the login page, got ${page.url()}`);
  await page.getByLabel("Admin key or inbox key").fill(key);
  await page.keyboard.press("Enter");
  await page.waitForURL(`${base}/ui`);
  await page.getByRole("heading", { name: "Inboxes" }).waitFor();
  await page.screenshot({ path: join(shots, "inboxes-laptop.png"), fullPage: true });

  step("open the messages page and wait for mail without reloading");
  await page.getByRole("link", { name: "Messages" }).click();
  await page.getByRole("heading", { name: "Messages" }).waitFor();
  // A marker on the window survives only if the page is never reloaded.
  await page.evaluate(() => { window.__notReloaded = true; });
  console.log("READY_FOR_MAIL");
  const row = page.locator("#message-rows tr", { hasText: subject });
  await row.waitFor({ timeout: SOON });
  if (!(await page.evaluate(() => window.__notReloaded === true))) {
    fail("the page reloaded instead of updating in place");
  }
  // The subject carries markup: it must arrive as text, never as elements or script.
  if (await page.evaluate(() => window.__xss !== undefined || !!document.querySelector("#message-rows b"))) {
    fail("markup from the subject was interpreted");
  }
  step("the webhook column shows the delivery going dead (the receiver answers 500 twice)");
  await row.locator(".pill.dead").waitFor({ timeout: SOON });
  await page.screenshot({ path: join(shots, "messages-laptop.png"), fullPage: true });

  step("the dead-letter queue lists it; open the message from there");
  await page.getByRole("link", { name: "Dead letters" }).click();
  const deadRow = page.locator("tbody tr", { hasText: "webhook" }).first();
  await deadRow.waitFor();
  await page.screenshot({ path: join(shots, "dead-laptop.png"), fullPage: true });
  await deadRow.getByRole("link").first().click();
  await page.getByRole("heading", { name: subject }).waitFor();
  await page.getByRole("heading", { name: "Sender verification" }).waitFor();
  const dead = page.locator('.delivery[data-status="dead"]');
  await dead.waitFor();
  const attemptsBefore = await dead.locator(".timeline li").count();
  if (attemptsBefore < 2) fail(`expected two failed attempts, saw ${attemptsBefore}`);
  await page.screenshot({ path: join(shots, "message-dead-laptop.png"), fullPage: true });

  step("resend the dead delivery and watch it succeed");
  await dead.getByRole("button", { name: "Resend" }).click();
  const delivered = page.locator('.delivery[data-status="delivered"]');
  await delivered.waitFor({ timeout: SOON });
  const timeline = await delivered.locator(".timeline").innerText();
  if (!timeline.includes("HTTP 200")) fail(`the timeline shows no 200: ${timeline}`);
  await page.screenshot({ path: join(shots, "message-delivered-laptop.png"), fullPage: true });

  step("phone width");
  await page.setViewportSize({ width: 390, height: 844 });
  await noSidewaysScroll(page, "the message page");
  await page.screenshot({ path: join(shots, "message-phone.png"), fullPage: true });
  await page.goto(`${base}/ui/messages`);
  await page.locator("#message-rows tr", { hasText: subject }).waitFor();
  await noSidewaysScroll(page, "the messages page");
  if (await page.evaluate(() => window.__xss !== undefined)) fail("the subject's script ran");
  await page.screenshot({ path: join(shots, "messages-phone.png"), fullPage: true });
  await page.goto(`${base}/ui`);
  await noSidewaysScroll(page, "the inboxes page");
  await page.screenshot({ path: join(shots, "inboxes-phone.png"), fullPage: true });
  await page.goto(`${base}/ui/inboxes/agent`);
  // The hmac-only webhook settings appear with their scheme (not saved: the page is reloaded).
  const hmac = page.locator("#hmac-settings");
  if (await hmac.isVisible()) fail("the hmac-sha256 settings show under another scheme");
  await page.getByLabel("Signature scheme").selectOption("hmac-sha256");
  await hmac.waitFor({ state: "visible" });
  await noSidewaysScroll(page, "the inbox page");
  await page.screenshot({ path: join(shots, "inbox-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: join(shots, "inbox-hmac-laptop.png"), fullPage: true });
  await page.getByLabel("Signature scheme").selectOption("agentmail");
  await hmac.waitFor({ state: "hidden" });

  step("rotate the signing secret: shown once");
  await page.goto(`${base}/ui/inboxes/agent`);
  await page.screenshot({ path: join(shots, "inbox-laptop.png"), fullPage: true });

  step("the inbox page charts the webhook's attempts of the last day");
  const chart = page.locator('#delivery-health svg.chart[data-endpoint="inbox (webhook)"]');
  await chart.waitFor();
  const chartTitle = await chart.locator("title").first().textContent();
  if (!chartTitle.startsWith("Attempts per hour")) fail(`unexpected chart title: ${chartTitle}`);
  // Two refusals, then the resend's 200.
  const chartSummary = await chart.locator("desc").textContent();
  if (!chartSummary.includes("1 delivered, 2 http_error")) fail(`chart summary: ${chartSummary}`);
  const box = await chart.boundingBox();
  if (!box || box.width < 300 || box.height < 100) fail(`the chart is not drawn: ${JSON.stringify(box)}`);
  await page.locator("#delivery-health").screenshot({ path: join(shots, "inbox-chart-laptop.png") });
  await page.getByRole("button", { name: "Rotate signing secret" }).click();
  await page.getByRole("heading", { name: /New signing secret/ }).waitFor();
  const secret = await page.getByLabel("Signing secret").inputValue();
  if (!/^[0-9a-f]{64}$/.test(secret)) fail(`unexpected secret: ${secret}`);
  await page.screenshot({ path: join(shots, "secret-laptop.png"), fullPage: true });
  await page.goto(`${base}/ui/inboxes/agent`);
  const html = await page.content();
  if (html.includes(secret)) fail("the secret is shown again on the inbox page");
  await page.locator(".badge.ok", { hasText: "Configured" }).first().waitFor();

  step("keyboard: the skip link is the first stop and moves focus to the content");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
  if (focused !== "Skip to content") fail(`first tab stop is "${focused}"`);

  step("create an inbox and its webhook from the dashboard");
  await page.goto(`${base}/ui`);
  const form = page.locator("#new-inbox");
  await form.locator("#id").fill("browser-made");
  await form.locator("#name").fill("Made in the browser");
  await form.locator("#addresses").fill("browser-made@example.com");
  await form.getByRole("button", { name: "Create inbox" }).click();
  await page.waitForURL(/\/ui\/inboxes\/browser-made$/);
  await page.locator("#url").fill(receiverUrl);
  await page.getByLabel("Enabled").check();
  await page.getByRole("button", { name: "Save webhook" }).click();
  await page.getByRole("heading", { name: /New signing secret/ }).waitFor();
  await page.goto(`${base}/ui/inboxes/browser-made`);
  const trySection = await page.locator("#try-it").innerText();
  if (!trySection.includes("browser-made@example.com")) fail(`no test mail command: ${trySection}`);
  console.log("READY_FOR_INBOX_MAIL");
  await page.goto(`${base}/ui/messages?inbox=browser-made`);
  await page.locator("#message-rows tr", { hasText: "to the browser-made inbox" }).waitFor({ timeout: SOON });

  step("log out");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(/\/ui\/login/);
  await page.goto(`${base}/ui/messages`);
  if (!page.url().includes("/ui/login")) fail("still logged in after logging out");

  if (errors.length > 0) fail(`browser errors: ${errors.join(" | ")}`);
  console.log("BROWSER_TEST_OK");
} catch (err) {
  console.error(`browser test failed: ${err && err.stack ? err.stack : err}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
