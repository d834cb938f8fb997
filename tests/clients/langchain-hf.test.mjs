// langchain-hf.test.mjs: LangChain's HuggingFaceInferenceEmbeddings
// (@langchain/community, through @huggingface/inference) with endpointUrl set
// to the server's base URL. It posts {"inputs": [texts]} to POST / and
// replaces newlines in texts with spaces first.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { HuggingFaceInferenceEmbeddings } from '@langchain/community/embeddings/hf';

import { apiKey, assertClose, embedRef, getJson, texts, url } from './common.mjs';

let info;
let ref;
let embeddings;

before(async () => {
  info = await getJson('/info');
  ref = await embedRef(texts);
  embeddings = new HuggingFaceInferenceEmbeddings({ model: info.model_id, apiKey, endpointUrl: url, maxRetries: 0 });
});

test('embedDocuments: one vector per text, equal to /embed', async () => {
  const got = await embeddings.embedDocuments(texts);
  assert.equal(got.length, texts.length);
  for (let i = 0; i < texts.length; i++) {
    assert.equal(got[i].length, info.dimension);
    assertClose(got[i], ref[i], `document ${i}`);
  }
});

test('embedQuery: the vector of the text, equal to /embed', async () => {
  const got = await embeddings.embedQuery(texts[2]);
  assert.equal(got.length, info.dimension);
  assertClose(got, ref[2], 'query');
});
