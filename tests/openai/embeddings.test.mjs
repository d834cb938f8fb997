// embeddings.test.mjs: `embedd serve` through the official OpenAI Node client.
//
//   EMBEDD_URL=http://127.0.0.1:PORT [EMBEDD_TEST_API_KEY=KEY] node --test tests/openai/embeddings.test.mjs
//
// tests/test_server.c starts a server and runs this (npm ci first when
// node_modules is missing). The client's default encoding is base64, which it
// decodes itself; encoding_format "float" gets JSON numbers. Both must give
// the same vectors.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import OpenAI from 'openai';

const url = process.env.EMBEDD_URL;
const apiKey = process.env.EMBEDD_TEST_API_KEY ?? 'unused';
const TOL = 1e-6;
const texts = [
  'The quick brown fox jumps over the lazy dog.',
  'A man is playing a guitar.',
  'Ünïcödé, 中文 and emoji 🎉 survive the trip',
];

let client;
let info;

function assertClose(got, want, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    assert.ok(Number.isFinite(got[i]), `${what}[${i}] = ${got[i]}`);
    assert.ok(Math.abs(got[i] - want[i]) <= TOL, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

function assertUnit(v, what) {
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 1e-5, `${what}: norm ${norm}`);
}

before(async () => {
  assert.ok(url, 'set EMBEDD_URL to the server, e.g. http://127.0.0.1:8080');
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 20_000 });
  const r = await fetch(`${url}/info`, { headers: { Authorization: `Bearer ${apiKey}` } });
  assert.equal(r.status, 200);
  info = await r.json();
});

test('models.list names the served model', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.deepEqual(ids, [info.model_id]);
});

test('string input: default (base64) and float agree', async () => {
  const b = await client.embeddings.create({ model: info.model_id, input: texts[0] });
  const f = await client.embeddings.create({
    model: info.model_id, input: texts[0], encoding_format: 'float',
  });
  for (const r of [b, f]) {
    assert.equal(r.object, 'list');
    assert.equal(r.model, `${info.model_id}@${info.model_version}`); // name@version
    assert.equal(r.data.length, 1);
    assert.equal(r.data[0].index, 0);
    assert.equal(r.data[0].embedding.length, info.dimension);
    assert.ok(r.usage.prompt_tokens > 2);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens);
  }
  assert.ok(Array.isArray(f.data[0].embedding), 'float response holds a plain array');
  assertClose(Array.from(b.data[0].embedding), f.data[0].embedding, 'base64 vs float');
  assertUnit(f.data[0].embedding, 'float');
});

test('array input: default (base64) and float agree, in order', async () => {
  const b = await client.embeddings.create({ model: info.model_id, input: texts });
  const f = await client.embeddings.create({
    model: info.model_id, input: texts, encoding_format: 'float',
  });
  assert.equal(b.data.length, texts.length);
  assert.equal(f.data.length, texts.length);
  assert.equal(b.usage.prompt_tokens, f.usage.prompt_tokens);
  for (let i = 0; i < texts.length; i++) {
    assert.equal(b.data[i].index, i);
    assert.equal(f.data[i].index, i);
    assert.equal(f.data[i].embedding.length, info.dimension);
    assertClose(Array.from(b.data[i].embedding), f.data[i].embedding, `text ${i}`);
    // each equals the single-text answer
    const one = await client.embeddings.create({
      model: info.model_id, input: texts[i], encoding_format: 'float',
    });
    assertClose(f.data[i].embedding, one.data[0].embedding, `text ${i} alone vs in the batch`);
  }
  // different texts, different vectors
  const d = f.data[0].embedding.reduce((m, x, k) => Math.max(m, Math.abs(x - f.data[1].embedding[k])), 0);
  assert.ok(d > 1e-3, 'texts 0 and 1 got the same vector');
});

test('dimensions: a renormalised prefix', async () => {
  const full = await client.embeddings.create({
    model: info.model_id, input: texts[1], encoding_format: 'float',
  });
  const cut = await client.embeddings.create({ model: info.model_id, input: texts[1], dimensions: 8 });
  const v = Array.from(cut.data[0].embedding);
  assert.equal(v.length, 8);
  assertUnit(v, 'dimensions 8');
  const prefix = full.data[0].embedding.slice(0, 8);
  const norm = Math.sqrt(prefix.reduce((s, x) => s + x * x, 0));
  assertClose(v, prefix.map((x) => x / norm), 'dimensions 8 vs the renormalised prefix');
});

test('errors map to the client\'s exception classes', async () => {
  await assert.rejects(
    client.embeddings.create({ model: info.model_id, input: '' }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.type === 'invalid_request_error',
  );
  await assert.rejects(
    client.embeddings.create({ model: info.model_id, input: 'x', encoding_format: 'hex' }),
    // OpenAI answers every invalid request 400 (issue 17), naming the field
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'encoding_format',
  );
  if (apiKey !== 'unused') {
    const wrong = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
    await assert.rejects(
      wrong.embeddings.create({ model: info.model_id, input: 'x' }),
      (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key',
    );
  }
});
