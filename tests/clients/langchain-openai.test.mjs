// langchain-openai.test.mjs: LangChain's OpenAIEmbeddings (@langchain/openai)
// against embedd, configured only by model, apiKey and configuration.baseURL.
// It always asks for base64 and decodes it itself; the vectors must equal
// /embed's for the same texts.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { OpenAIEmbeddings } from '@langchain/openai';

import { apiKey, assertClose, assertUnit, embedRef, getJson, texts, url } from './common.mjs';

let info;
let ref;

function embeddings(extra = {}) {
  return new OpenAIEmbeddings({
    model: info.model_id,
    apiKey: apiKey ?? 'unused',
    configuration: { baseURL: `${url}/v1` },
    maxRetries: 0,
    ...extra,
  });
}

before(async () => {
  info = await getJson('/info');
  ref = await embedRef(texts);
});

test('embedDocuments: one vector per text, in order, equal to /embed', async () => {
  const got = await embeddings().embedDocuments(texts);
  assert.equal(got.length, texts.length);
  for (let i = 0; i < texts.length; i++) {
    assert.equal(got[i].length, info.dimension);
    assertClose(got[i], ref[i], `document ${i}`);
  }
});

test('embedQuery equals /embed for the same text', async () => {
  const got = await embeddings().embedQuery(texts[1]);
  assert.equal(got.length, info.dimension);
  assertClose(got, ref[1], 'query');
  assertUnit(got, 'query');
});

test('dimensions: a renormalised prefix of the full vector', async () => {
  const got = await embeddings({ dimensions: 8 }).embedQuery(texts[0]);
  const prefix = ref[0].slice(0, 8);
  const norm = Math.hypot(...prefix);
  assertClose(got, prefix.map((x) => x / norm), 'dimensions 8');
});

test('batchSize smaller than the input: requests are split, order kept', async () => {
  const got = await embeddings({ batchSize: 2 }).embedDocuments(texts);
  assert.equal(got.length, texts.length);
  for (let i = 0; i < texts.length; i++) assertClose(got[i], ref[i], `document ${i} (batches of 2)`);
});
