// common.mjs: what the client tests share: the server's address and key
// from the environment, the reference vectors from /embed, comparisons, and
// the helpers below.
//
//   EMBEDD_URL            base URL of a server, e.g. http://127.0.0.1:8080
//   EMBEDD_TEST_API_KEY   its --api-key, when it has one
//   EMBEDD_QDRANT_URL     the server the Qdrant client talks to (default
//                         EMBEDD_URL); EMBEDD_QDRANT_API_KEY its key, if any
import assert from 'node:assert/strict';

export const url = process.env.EMBEDD_URL;
export const apiKey = process.env.EMBEDD_TEST_API_KEY;
export const qdrantUrl = process.env.EMBEDD_QDRANT_URL || url;
export const qdrantKey = process.env.EMBEDD_QDRANT_API_KEY || undefined;

// Vectors from two routes of the same server differ only by batching (GEMM
// blocking changes the last bits).
export const TOL = 1e-5;

export const texts = [
  'The quick brown fox jumps over the lazy dog.',
  'A man is playing a guitar.',
  'Ünïcödé, 中文 and emoji 🎉 survive the trip',
];

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

export async function getJson(path) {
  assert.ok(url, 'set EMBEDD_URL to the server, e.g. http://127.0.0.1:8080');
  const r = await fetch(`${url}${path}`, { headers: authHeaders() });
  assert.equal(r.status, 200, `GET ${path}: ${r.status}`);
  return r.json();
}

// The reference: TEI's /embed for the same texts, one vector per text.
export async function embedRef(inputs) {
  const r = await fetch(`${url}/embed`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...authHeaders() },
    body: JSON.stringify({ inputs }),
  });
  assert.equal(r.status, 200, `/embed: ${r.status}`);
  return r.json();
}

export function assertClose(got, want, what, tol = TOL) {
  assert.ok(Array.isArray(got) || ArrayBuffer.isView(got), `${what}: not an array: ${JSON.stringify(got)?.slice(0, 200)}`);
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    assert.ok(Number.isFinite(got[i]), `${what}[${i}] = ${got[i]}`);
    assert.ok(Math.abs(got[i] - want[i]) <= tol, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

export function assertUnit(v, what) {
  const norm = Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 1e-5, `${what}: norm ${norm}`);
}
