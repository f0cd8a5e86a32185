// The seller console and the storefront in a real browser (Debian's Chromium driven by
// Playwright), against a running Storemesh whose edge serves this front end. Run by
// tests/tests/web_console.rs, which starts `storemesh up` on free ports and sets:
//   STOREMESH_WEB_URL     the edge origin (pages, uploads and images)
//   STOREMESH_TEST_IMAGES a folder with oak-lamp-front.jpg, oak-lamp-side.jpg and the
//                         truncated oak-lamp-broken.jpg
//   STOREMESH_ARTIFACTS   where the screenshots go
//   CHROMIUM              the browser (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const BASE = required("STOREMESH_WEB_URL");
const IMAGES = required("STOREMESH_TEST_IMAGES");
const ARTIFACTS = required("STOREMESH_ARTIFACTS");
const FILES = ["oak-lamp-front.jpg", "oak-lamp-side.jpg", "oak-lamp-broken.jpg"];
/** Thumbnails are made by the real pipeline (dispatcher → thumbnail function → catalog). */
const PIPELINE_MS = 120_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

let browser;
/** The seller's tab, signed in; shared by the steps below, which run in order. */
let seller;
const email = `seller-${Date.now()}@example.com`;
const password = "a good long password";
const title = "Oak desk lamp";
let productId;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // As root (CI) Chromium needs --no-sandbox; the rest keeps it off the closed network.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  seller = await context.newPage();
  seller.on("pageerror", (error) => console.error(`page error: ${error.message}`));
});

after(async () => {
  await browser?.close();
});

test("a wrong password is answered in words", async () => {
  await seller.goto(`${BASE}/console`);
  await seller.getByLabel("Email").fill("nobody@example.com");
  await seller.getByLabel("Password").fill("not the password at all");
  await seller.getByRole("button", { name: "Sign in" }).click();
  const alert = seller.getByRole("alert");
  await alert.waitFor();
  const text = await alert.textContent();
  assert.match(text, /email and password do not match/i);
  assert.doesNotMatch(text, /\b(16|unauthenticated)\b/i, "no status names or numbers");
});

test("a seller signs up and creates a product", async () => {
  await seller.getByRole("link", { name: "Create a seller account" }).click();
  await seller.getByLabel("Shop or display name").fill("Oak & Light");
  await seller.getByLabel("Email").fill(email);
  await seller.getByLabel("Password").fill(password);
  await seller.getByRole("button", { name: "Create account" }).click();
  await seller.getByRole("heading", { name: "Your products" }).waitFor();
  assert.equal(await seller.locator(".who").textContent(), "Oak & Light");
  // The access token lives in memory only; the refresh token in this tab's sessionStorage.
  const stored = await seller.evaluate(() => Object.keys(sessionStorage).sort());
  assert.deepEqual(stored, ["storemesh.refreshToken", "storemesh.user"]);

  const form = seller.getByRole("form", { name: "New product" });
  await form.getByLabel("Title").fill(title);
  await form.getByLabel("Price").fill("49.90");
  await form.getByLabel("Currency").selectOption("EUR");
  await form.getByRole("button", { name: "Create product" }).click();
  await seller.waitForURL(/\/console\/products\/[0-9A-Za-z_-]+$/);
  productId = new URL(seller.url()).pathname.split("/").pop();
  await seller.getByRole("heading", { name: title }).waitFor();
  assert.equal(await seller.locator(".badge.draft").first().textContent(), "Draft");
});

test("three images dropped at once upload with progress and turn into thumbnails live", async () => {
  // A marker that a reload would lose: everything below must happen in this page.
  await seller.evaluate(() => {
    window.__storemeshMarker = "no reload";
  });
  const files = await Promise.all(
    FILES.map(async (name) => ({
      name,
      base64: (await readFile(join(IMAGES, name))).toString("base64"),
    })),
  );
  // Drag and drop of three files, as the browser delivers it (a DataTransfer on a drop event).
  const transfer = await seller.evaluateHandle((files) => {
    const data = new DataTransfer();
    for (const { name, base64 } of files) {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      data.items.add(new File([bytes], name, { type: "image/jpeg" }));
    }
    return data;
  }, files);
  await seller.dispatchEvent(".dropzone", "dragover", { dataTransfer: transfer });
  await seller.dispatchEvent(".dropzone", "drop", { dataTransfer: transfer });

  // Each file has its own progress bar, and each reaches 100 %.
  const uploads = seller.getByRole("list", { name: "Uploads" }).getByRole("listitem");
  await waitUntil(async () => (await uploads.count()) === 3, 10_000, "three upload rows");
  for (const name of FILES) {
    const row = uploads.filter({ hasText: name });
    await row.getByText("Uploaded").waitFor({ timeout: 60_000 });
    assert.equal(await row.locator("progress").getAttribute("value"), "100");
    assert.equal((await row.locator(".percent").textContent()).trim(), "100 %");
  }

  // Live from WatchProduct: two thumbnails appear and the broken one shows why it failed.
  const cards = seller.getByRole("list", { name: "Images" }).getByRole("listitem");
  await waitUntil(async () => (await cards.count()) === 3, 30_000, "three image cards");
  await waitUntil(
    async () =>
      (await seller.locator('.image-card[data-state="ready"] img').evaluateAll((imgs) =>
        imgs.filter((img) => img.complete && img.naturalWidth > 0).length,
      )) === 2,
    PIPELINE_MS,
    "two thumbnails loaded",
  );
  const failed = seller.locator('.image-card[data-state="failed"]');
  await failed.waitFor({ timeout: PIPELINE_MS });
  const reason = (await failed.locator(".placeholder").textContent()).trim();
  assert.match(reason, /^Failed: .{8,}/, `a reason is shown: ${reason}`);
  assert.equal(
    await seller.evaluate(() => window.__storemeshMarker),
    "no reload",
    "the page was not reloaded",
  );
  const alts = await seller.locator(".image-card img").evaluateAll((imgs) => imgs.map((i) => i.alt));
  for (const alt of alts) {
    assert.match(alt, new RegExp(`^${title}, image [1-3] of 3$`));
  }

  // Choose the second ready image as the primary one.
  const second = seller.locator('.image-card[data-state="ready"]').nth(1);
  const secondId = await second.getAttribute("data-image-id");
  await second.getByRole("button", { name: /Make .* the primary image/ }).click();
  await second.locator(".badge.primary").waitFor();
  await seller.screenshot({ path: join(ARTIFACTS, "console.png"), fullPage: true });
  seller.primaryImageId = secondId;

  // Delete the failed image (after confirming); the card goes, live.
  seller.once("dialog", (dialog) => dialog.accept());
  await failed.getByRole("button", { name: /^Delete / }).click();
  await waitUntil(async () => (await cards.count()) === 2, 15_000, "the failed image deleted");
  assert.equal(await seller.locator('.image-card[data-state="failed"]').count(), 0);
});

test("the seller edits the price and the tags", async () => {
  const form = seller.getByRole("form", { name: "Product details" });
  await form.getByLabel("Price").fill("39.5");
  await form.getByLabel(/^Tags/).fill("Lamps, oak");
  await form.getByRole("button", { name: "Save" }).click();
  await form.getByText("Saved.").waitFor();
  // A price the currency cannot have is refused in words before any call.
  await form.getByLabel("Price").fill("39.505");
  await form.getByRole("button", { name: "Save" }).click();
  assert.match(await form.getByRole("alert").textContent(), /price as a number/);
  await form.getByLabel("Price").fill("39.50");
});

test("keyboard: the console's controls are reachable and labelled", async () => {
  // Every input and button of the page has an accessible name.
  const unlabelled = await seller.evaluate(() =>
    [...document.querySelectorAll("input, select, button")]
      .filter((el) => el.type !== "hidden")
      .filter((el) => {
        const label = el.labels?.[0]?.textContent?.trim() || el.getAttribute("aria-label") || el.textContent?.trim();
        return !label;
      })
      .map((el) => el.outerHTML),
  );
  assert.deepEqual(unlabelled, []);
  // Tab reaches the Publish button.
  await seller.locator("body").focus();
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await seller.keyboard.press("Tab");
    reached = await seller.evaluate(() => document.activeElement?.textContent === "Publish");
  }
  assert.ok(reached, "Publish is reachable with Tab");
  await seller.keyboard.press("Enter");
  await seller.locator(".badge.published").first().waitFor();
});

test("a shopper, not signed in, sees the product with its images in the storefront", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const shopper = await context.newPage();
  await shopper.goto(`${BASE}/`);
  const card = shopper.locator(`.shop-card[data-product-id="${productId}"]`);
  await card.waitFor({ timeout: 30_000 });
  assert.equal((await card.locator(".title").textContent()).trim(), title);
  assert.equal((await card.locator(".price").textContent()).trim(), "€39.50");
  const img = card.locator("img");
  await img.waitFor();
  await waitUntil(
    () => img.evaluate((el) => el.complete && el.naturalWidth > 0),
    30_000,
    "the card's image loaded",
  );
  const shown = await img.evaluate((el) => ({
    alt: el.alt,
    loading: el.loading,
    srcset: el.srcset,
    currentSrc: el.currentSrc,
    slot: el.getBoundingClientRect().width,
    dpr: window.devicePixelRatio,
  }));
  assert.equal(shown.alt, title);
  assert.equal(shown.loading, "lazy");
  // The primary image, and the candidate of its srcset the browser should pick for the slot.
  assert.ok(shown.currentSrc.includes(`/img/${seller.primaryImageId}/`), shown.currentSrc);
  const candidates = shown.srcset
    .split(",")
    .map((entry) => entry.trim().split(/\s+/))
    .map(([url, width]) => ({ url, width: Number.parseInt(width, 10) }))
    .sort((a, b) => a.width - b.width);
  assert.ok(candidates.length >= 2, shown.srcset);
  const needed = shown.slot * shown.dpr;
  const expected = candidates.find((c) => c.width >= needed) ?? candidates[candidates.length - 1];
  assert.equal(shown.currentSrc, expected.url, `slot ${shown.slot}px at ${shown.dpr}x`);
  await shopper.screenshot({ path: join(ARTIFACTS, "storefront.png"), fullPage: true });

  // The product page shows every ready image (not the failed one), all loaded.
  await card.locator("a").click();
  await shopper.waitForURL(`${BASE}/p/${productId}`);
  await shopper.getByRole("heading", { name: title }).waitFor();
  assert.deepEqual(
    await shopper.getByRole("list", { name: "Tags" }).getByRole("listitem").allTextContents(),
    ["lamps", "oak"],
  );
  const gallery = shopper.locator(".gallery img");
  await waitUntil(async () => (await gallery.count()) === 2, 10_000, "two images on the page");
  for (const image of await gallery.all()) {
    await image.scrollIntoViewIfNeeded();
    await waitUntil(
      () => image.evaluate((el) => el.complete && el.naturalWidth > 0),
      30_000,
      "a product page image loaded",
    );
  }
  await shopper.screenshot({ path: join(ARTIFACTS, "storefront-product.png"), fullPage: true });
  await context.close();
});

test("unpublished, the product is gone from the storefront", async () => {
  await seller.getByRole("button", { name: "Unpublish" }).click();
  await seller.locator(".badge.draft").first().waitFor();
  const context = await browser.newContext();
  const shopper = await context.newPage();
  await shopper.goto(`${BASE}/`);
  await shopper.getByRole("heading", { name: "Shop" }).waitFor();
  await shopper.getByText("Nothing for sale yet.").waitFor({ timeout: 15_000 });
  assert.equal(await shopper.locator(`.shop-card[data-product-id="${productId}"]`).count(), 0);
  // A direct link to it now says it is not there.
  await shopper.goto(`${BASE}/p/${productId}`);
  await shopper.getByRole("alert").waitFor();
  await context.close();
});

test("signing out revokes the session", async () => {
  const refreshToken = await seller.evaluate(() => sessionStorage.getItem("storemesh.refreshToken"));
  assert.ok(refreshToken);
  await seller.getByRole("button", { name: "Sign out" }).click();
  await seller.getByRole("link", { name: "Sign in" }).waitFor();
  assert.equal(await seller.evaluate(() => sessionStorage.length), 0);
  // The refresh token was revoked, not just forgotten: put back, it no longer signs in.
  const user = JSON.stringify({ id: "x", email, displayName: "Oak & Light", role: 2 });
  await seller.evaluate(
    ([token, user]) => {
      sessionStorage.setItem("storemesh.refreshToken", token);
      sessionStorage.setItem("storemesh.user", user);
    },
    [refreshToken, user],
  );
  await seller.goto(`${BASE}/console`);
  await seller.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await seller.evaluate(() => sessionStorage.length), 0);
});

async function waitUntil(condition, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await condition()) {
        return;
      }
    } catch {
      // The element may be re-rendered meanwhile; try again.
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
