// hf-inference.test.mjs: @huggingface/inference against embedd as a TEI
// endpoint, with the endpoint set to the server's BASE URL (how TEI endpoints
// are used), never /embed. The client then posts {"inputs": ...} to POST /
// and hands back the JSON it gets, which must be what /embed answers.
//
// Three documented ways to give the endpoint in this version:
// new InferenceClient(token, {endpointUrl}) (README "Using local endpoints"),
// client.endpoint(url) (what LangChain uses), and featureExtraction's
// per-call endpointUrl (the older HfInference style).
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { HfInference, InferenceClient } from '@huggingface/inference';

import { apiKey, assertClose, embedRef, getJson, texts, url } from './common.mjs';

let info;
let ref;

before(async () => {
  info = await getJson('/info');
  ref = await embedRef(texts);
});

function assertVectors(got, what) {
  assert.ok(Array.isArray(got), `${what}: ${JSON.stringify(got)?.slice(0, 200)}`);
  assert.equal(got.length, texts.length, `${what}: one vector per input`);
  for (let i = 0; i < texts.length; i++) {
    assert.equal(got[i].length, info.dimension, `${what}[${i}]: dimension`);
    assertClose(got[i], ref[i], `${what}[${i}]`);
  }
}

test('InferenceClient(token, {endpointUrl: base URL}).featureExtraction', async () => {
  const hf = new InferenceClient(apiKey, { endpointUrl: url });
  assertVectors(await hf.featureExtraction({ inputs: texts }), 'array input');
  // a single string: TEI answers one row, [[...]], as /embed does
  const one = await hf.featureExtraction({ inputs: texts[1] });
  assert.equal(one.length, 1);
  assertClose(one[0], ref[1], 'string input');
});

test('InferenceClient(token).endpoint(base URL).featureExtraction', async () => {
  const hf = new InferenceClient(apiKey).endpoint(url);
  assertVectors(await hf.featureExtraction({ inputs: texts }), 'endpoint()');
});

test('HfInference(token).featureExtraction({endpointUrl: base URL})', async () => {
  const hf = new HfInference(apiKey);
  assertVectors(await hf.featureExtraction({ endpointUrl: url, inputs: texts }), 'per-call endpointUrl');
});

test('a wrong token is refused with the server\'s 401', async (t) => {
  if (!apiKey) {
    t.skip('the server has no --api-key');
    return;
  }
  const hf = new InferenceClient('wrong-key', { endpointUrl: url });
  await assert.rejects(hf.featureExtraction({ inputs: 'x' }), (e) => {
    assert.equal(e.httpResponse?.status, 401, String(e));
    return true;
  });
});
