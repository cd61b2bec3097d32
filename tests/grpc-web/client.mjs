// A grpc-web client for keyhouse, used by the end-to-end tests.
//
// Usage:
//   node tests/grpc-web/client.mjs <base-url> <session-token> [--expect-unauthenticated]
//
// It loads the checked-in descriptor set (gen/src/keyhouse_descriptor.bin) at run time, so no
// code generation is needed, and calls keyhouse.v1.UserKeyService over the grpc-web protocol
// (binary format, HTTP/1.1 through fetch).
//
// Default mode: CreateKey {name: "from grpc-web", permissions: ["llm:inference"]}, then
// ListKeys {}, and prints one line of JSON to stdout:
//   {"created":{"key_id":..,"key_name":..,"key_preview":..,"api_key_prefix":"uc_","api_key_length":67},
//    "listed":[<keyId>, ...]}
// The full API key is never printed.
//
// --expect-unauthenticated: calls ListKeys without the authorization header and exits 0 only
// when it fails with code Unauthenticated, printing {"unauthenticated":true,"message":..}.
//
// Any failure prints one line to stderr and exits 1.

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

const SERVICE = "keyhouse.v1.UserKeyService";
// KEYHOUSE_DESCRIPTOR_SET names the file when the script runs away from the repository (the test
// suite runs a copy beside its npm packages).
const DESCRIPTOR_URL = process.env.KEYHOUSE_DESCRIPTOR_SET
  ? new URL(`file://${process.env.KEYHOUSE_DESCRIPTOR_SET}`)
  : new URL("../../gen/src/keyhouse_descriptor.bin", import.meta.url);
const TIMEOUT_MS = 30_000;

function oneLine(text) {
  return String(text).replace(/\s+/g, " ").trim();
}

// The innermost causes of an error, e.g. "fetch failed" <- "connect ECONNREFUSED 127.0.0.1:1".
function describeCause(err) {
  const parts = [];
  let cause = err instanceof Error ? err.cause : undefined;
  for (let depth = 0; cause !== undefined && depth < 4; depth++) {
    parts.push(cause instanceof Error ? cause.message : String(cause));
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return parts.length > 0 ? ` (cause: ${parts.join(": ")})` : "";
}

function describeError(err) {
  if (err instanceof ConnectError) {
    const name = Code[err.code] ?? "Unknown";
    return `ConnectError code=${err.code} (${name}): ${err.rawMessage || err.message}${describeCause(err)}`;
  }
  if (err instanceof Error) {
    return `${err.name}: ${err.message}${describeCause(err)}`;
  }
  return String(err);
}

function fail(message) {
  process.stderr.write(`grpc-web client: ${oneLine(message)}\n`);
  process.exit(1);
}

async function loadService() {
  const path = fileURLToPath(DESCRIPTOR_URL);
  const bytes = await readFile(path);
  const set = fromBinary(FileDescriptorSetSchema, new Uint8Array(bytes));
  const registry = createFileRegistry(set);
  const service = registry.getService(SERVICE);
  if (!service) {
    throw new Error(`service ${SERVICE} not found in ${path}`);
  }
  return service;
}

function makeClient(service, baseUrl, token) {
  const interceptors = [];
  if (token !== undefined) {
    interceptors.push((next) => async (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  const transport = createGrpcWebTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors,
    defaultTimeoutMs: TIMEOUT_MS,
  });
  return createClient(service, transport);
}

async function runDefault(service, baseUrl, token) {
  const client = makeClient(service, baseUrl, token);
  const issued = await client.createKey({
    name: "from grpc-web",
    permissions: ["llm:inference"],
  });
  const apiKey = String(issued.apiKey ?? "");
  const listed = await client.listKeys({});
  const out = {
    created: {
      key_id: issued.keyId,
      key_name: issued.keyName,
      key_preview: issued.keyPreview,
      api_key_prefix: apiKey.slice(0, 3),
      api_key_length: apiKey.length,
    },
    listed: listed.keys.map((k) => k.keyId),
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

async function runExpectUnauthenticated(service, baseUrl) {
  const client = makeClient(service, baseUrl, undefined);
  let listed;
  try {
    listed = await client.listKeys({});
  } catch (err) {
    const ce = ConnectError.from(err);
    if (ce.code === Code.Unauthenticated) {
      process.stdout.write(
        `${JSON.stringify({ unauthenticated: true, message: ce.rawMessage })}\n`,
      );
      return;
    }
    fail(`expected Unauthenticated, got ${describeError(err)}`);
  }
  fail(`expected Unauthenticated, but ListKeys succeeded with ${listed.keys.length} key(s)`);
}

async function main() {
  const args = process.argv.slice(2);
  const expectUnauth = args.includes("--expect-unauthenticated");
  const positional = args.filter((a) => a !== "--expect-unauthenticated");
  if (positional.length !== 2 || positional.some((a) => a.startsWith("--"))) {
    fail("usage: node client.mjs <base-url> <session-token> [--expect-unauthenticated]");
  }
  const [baseUrl, token] = positional;
  const service = await loadService();
  if (expectUnauth) {
    await runExpectUnauthenticated(service, baseUrl);
  } else {
    if (token.trim() === "") {
      fail("session token is empty");
    }
    await runDefault(service, baseUrl, token.trim());
  }
}

main().catch((err) => fail(describeError(err)));
