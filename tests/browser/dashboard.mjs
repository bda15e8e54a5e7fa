// Drives Debian's Chromium (headless) through the root's web dashboard as a user
// would: log in, see the cluster's workers, deploy an invalid SLA and see the field
// errors beside the fields, upload the seed's SLA and see its instances reach RUNNING,
// scale a service, follow an instance's log ($LOG_SERVICE's, until it shows
// $LOG_EXPECT), delete the application. Screenshots go to
// $SHOTS. Run by tests/tests/e2e_dashboard.rs, which starts the system; prints one
// line per step and exits non-zero at the first step that fails.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const [url, password, shots] = [env("GROVE_URL"), env("GROVE_PASSWORD"), env("SHOTS")];
const seed = JSON.parse(readFileSync(env("SEED_SLA"), "utf8"));
const workers = env("WORKERS").split(",");
const WAIT = 60_000;

const t0 = Date.now();
const step = (what) => console.log(`${((Date.now() - t0) / 1000).toFixed(2)}s ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
// Refused API calls (the wrong password, the bad SLA) log a load error: expected.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
});
// The dashboard works offline: nothing but the root is ever asked.
page.on("request", (r) => {
  if (!r.url().startsWith(url)) problems.push(`request elsewhere: ${r.url()}`);
});

try {
  await page.goto(url + "/");
  await page.waitForSelector("#login-form", { state: "visible" });
  step("login form shown");

  // A wrong password is refused, saying so.
  await page.fill("input[name=username]", "Admin");
  await page.fill("input[name=password]", "not-the-password");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#login-error:has-text('invalid username or password')", { timeout: WAIT });
  step("a wrong password is refused");

  await page.fill("input[name=password]", password);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app-view", { state: "visible", timeout: WAIT });
  step("logged in");

  for (const w of workers) {
    await page.waitForSelector(`table.nodes tr[data-node="${w}"]:has-text("active")`, { timeout: WAIT });
  }
  step(`workers ${workers.join(", ")} listed as active`);

  // An invalid SLA: the API's field errors appear beside the fields.
  const bad = structuredClone(seed);
  bad.applications[0].application_name = "broken";
  bad.applications[0].microservices[0].memory = -5;
  delete bad.applications[0].microservices[1].code;
  await page.fill("#sla", JSON.stringify(bad, null, 2));
  await page.click("#deploy-form button[type=submit]");
  const memRow = 'tr.field-error[data-field="applications[0].microservices[0].memory"]';
  await page.waitForSelector(memRow, { timeout: WAIT });
  const memText = await page.textContent(memRow);
  if (!/-5/.test(memText) || !/range|positive|must/i.test(memText)) {
    throw new Error(`the memory field's row says: ${memText}`);
  }
  const codeRow = 'tr.field-error[data-field="applications[0].microservices[1].code"]';
  await page.waitForSelector(codeRow, { timeout: WAIT });
  step(`field errors shown beside the fields: "${memText.trim()}"`);
  await page.screenshot({ path: `${shots}/dashboard-field-errors.png`, fullPage: true });

  // The seed's SLA file, uploaded unchanged: every instance reaches RUNNING, live.
  await page.setInputFiles("#sla-file", env("SEED_SLA"));
  await page.waitForFunction(() => document.getElementById("sla").value.includes("clientsrvr"));
  await page.click("#deploy-form button[type=submit]");
  await page.waitForSelector("#deploy-ok:has-text('Deployed')", { timeout: WAIT });
  step("seed SLA uploaded and deployed");
  const app = seed.applications[0].application_name;
  const services = seed.applications[0].microservices.map((m) => m.microservice_name);
  for (const s of services) {
    await page.waitForSelector(
      `[data-app="${app}"] [data-service="${s}"] tr[data-instance="0"] .status.RUNNING`, { timeout: WAIT });
  }
  step(`instances of ${services.join(", ")} RUNNING`);
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // Scale the first service to 2.
  const first = `[data-app="${app}"] [data-service="${services[0]}"]`;
  await page.fill(`${first} input[data-scale]`, "2");
  await page.click(`${first} button[data-action=scale]`);
  await page.waitForSelector(`${first} tr[data-instance="1"] .status.RUNNING`, { timeout: WAIT });
  step(`${services[0]} scaled to 2, both RUNNING`);

  // An instance's log, asked of its worker through the cluster, followed live.
  const logService = env("LOG_SERVICE");
  const expect = env("LOG_EXPECT");
  await page.click(`[data-app="${app}"] [data-service="${logService}"] tr[data-instance="0"] button[data-action=log]`);
  await page.waitForSelector("#log-view", { state: "visible" });
  await page.waitForFunction((want) => document.getElementById("log").textContent.includes(want),
    expect, { timeout: WAIT });
  const logText = await page.textContent("#log");
  step(`log of ${logService} #0: ${JSON.stringify(logText.trim().slice(0, 100))}`);
  await page.screenshot({ path: `${shots}/dashboard-log.png`, fullPage: true });
  await page.click("#log-close");

  await page.click(`[data-app="${app}"] button[data-action=delete-app]`);
  await page.waitForSelector(`[data-app="${app}"]`, { state: "detached", timeout: WAIT });
  step("application deleted");

  await page.click("#logout");
  await page.waitForSelector("#login-form", { state: "visible" });
  step("logged out");
} catch (e) {
  await page.screenshot({ path: `${shots}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  console.error(`FAILED: ${e.message}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
if (problems.length) {
  console.error(`FAILED: ${problems.join("\n")}`);
  process.exit(1);
}
step("done");
