// dist/herald.global.js must be what build.mjs makes of src/herald.js (run `npm run build`),
// and it must define Herald as a classic script.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createContext, runInContext } from "node:vm";
import { build, SOURCE, TARGET } from "../build.mjs";

test("dist/herald.global.js is up to date with src/herald.js (npm run build)", () => {
  const expected = build(readFileSync(SOURCE, "utf8"));
  const actual = readFileSync(TARGET, "utf8");
  assert.ok(actual === expected, "dist/herald.global.js is stale: run `npm run build` in clients/js and commit it");
});

test("the classic build defines globalThis.Herald and HeraldError, and nothing else leaks", () => {
  const sandbox = {};
  createContext(sandbox);
  runInContext(readFileSync(TARGET, "utf8"), sandbox, { filename: "herald.global.js" });
  assert.equal(typeof sandbox.Herald, "function");
  assert.equal(typeof sandbox.HeraldError, "function");
  assert.equal(sandbox.Herald.HeraldError, sandbox.HeraldError);
  assert.deepEqual(Object.keys(sandbox).sort(), ["Herald", "HeraldError"]);
  const h = new sandbox.Herald("https://example.test/base/", { transports: ["longpoll"] });
  assert.equal(h.url, "https://example.test/base");
  assert.equal(h.state, "disconnected");
});

test("the module has no imports and exports Herald, HeraldError and a default", async () => {
  const source = readFileSync(SOURCE, "utf8");
  assert.doesNotMatch(source, /^\s*import\s/m);
  const module = await import("../src/herald.js");
  assert.equal(module.default, module.Herald);
  assert.equal(typeof module.HeraldError, "function");
});
