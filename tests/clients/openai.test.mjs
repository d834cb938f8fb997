// openai.test.mjs: `embedd serve` through the official OpenAI Node client,
// configured only by baseURL and apiKey (see common.mjs for the environment).
//
// The client's default encoding is base64, which it decodes itself;
// encoding_format "float" gets JSON numbers. Both must give the same vectors,
// and the same as /embed. With baseURL set to the server's root (no /v1) the
// client posts to /embeddings.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import OpenAI from 'openai';

import { apiKey as key, assertClose, assertUnit, embedRef, getJson, texts, url } from './common.mjs';

const apiKey = key ?? 'unused';

let client;
let info;

before(async () => {
  info = await getJson('/info');
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 20_000 });
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

test('vectors equal /embed for the same texts', async () => {
  const f = await client.embeddings.create({ model: info.model_id, input: texts, encoding_format: 'float' });
  const ref = await embedRef(texts);
  for (let i = 0; i < texts.length; i++) assertClose(f.data[i].embedding, ref[i], `text ${i} vs /embed`);
});

test('models.retrieve(served name); an unknown model is NotFoundError', async () => {
  const m = await client.models.retrieve(info.model_id);
  assert.equal(m.id, info.model_id);
  assert.equal(m.object, 'model');
  assert.equal(typeof m.created, 'number');
  assert.equal(typeof m.owned_by, 'string');
  await assert.rejects(client.models.retrieve('no-such-model'),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
});

test('baseURL without /v1: POST /embeddings', async () => {
  const bare = new OpenAI({ baseURL: url, apiKey, maxRetries: 0, timeout: 20_000 });
  const b = await bare.embeddings.create({ model: info.model_id, input: texts });
  const f = await bare.embeddings.create({ model: info.model_id, input: texts[2], encoding_format: 'float' });
  const ref = await embedRef(texts);
  assert.equal(b.object, 'list');
  assert.equal(b.data.length, texts.length);
  for (let i = 0; i < texts.length; i++) {
    assert.equal(b.data[i].index, i);
    assertClose(Array.from(b.data[i].embedding), ref[i], `/embeddings text ${i} vs /embed`);
  }
  assertClose(f.data[0].embedding, ref[2], '/embeddings float vs /embed');
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
