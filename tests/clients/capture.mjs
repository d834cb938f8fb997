// capture.mjs: what each client of the matrix puts on the wire.
//
//   node tests/clients/capture.mjs > capture.md
//
// Starts a small HTTP server on 127.0.0.1 that records every request
// (method, path, headers, body) and answers with a plausible body of the API
// the client expects (TEI, OpenAI, Qdrant), so each client gets on to its
// next call. Then drives every client of the matrix against it, the same
// calls the *.test.mjs files make, and prints one Markdown table per client.
// docs/clients.md holds its output: the requests the server's routes must
// accept. Not a test (node --test runs only *.test.mjs).
import http from 'node:http';

import OpenAI from 'openai';
import { OpenAIEmbeddings } from '@langchain/openai';
import { InferenceClient, HfInference } from '@huggingface/inference';
import { HuggingFaceInferenceEmbeddings } from '@langchain/community/embeddings/hf';
import { QdrantClient } from '@qdrant/js-client-rest';

const DIM = 4;
const log = [];
const vec = (i) => [1, i, 0, 0].map((x) => x / Math.hypot(1, i));

function openaiReply(req) {
  const input = Array.isArray(req.input) ? req.input : [req.input];
  const data = input.map((_, i) => {
    const v = vec(i);
    const embedding = req.encoding_format === 'base64'
      ? Buffer.from(new Float32Array(v).buffer).toString('base64') : v;
    return { object: 'embedding', index: i, embedding };
  });
  return { object: 'list', data, model: req.model, usage: { prompt_tokens: 3, total_tokens: 3 } };
}

function qdrant(result) {
  return { result, status: 'ok', time: 0.0001 };
}

// A reply for each route the clients call; 404 otherwise.
function reply(method, path, body) {
  const p = path.replace(/\?.*/, '');
  if (method === 'POST' && (p === '/' || p === '/embed')) {
    const n = Array.isArray(body.inputs) ? body.inputs.length : 1;
    return [200, Array.from({ length: n }, (_, i) => vec(i))];
  }
  if (method === 'GET' && p === '/') return [200, { title: 'embedd', version: '1.18.0' }];
  if (method === 'POST' && /^(\/v1)?\/embeddings$/.test(p)) return [200, openaiReply(body)];
  if (method === 'GET' && p === '/v1/models') {
    return [200, { object: 'list', data: [{ id: 'm', object: 'model', created: 0, owned_by: 'embedd' }] }];
  }
  const model = p.match(/^\/v1\/models\/([^/]+)$/);
  if (method === 'GET' && model) {
    return [200, { id: decodeURIComponent(model[1]), object: 'model', created: 0, owned_by: 'embedd' }];
  }
  if (method === 'GET' && p === '/collections') return [200, qdrant({ collections: [{ name: 'docs' }] })];
  const c = p.match(/^\/collections\/([^/]+)(\/.*)?$/);
  if (!c) return [404, { error: `no route ${method} ${p}` }];
  const rest = c[2] ?? '';
  const point = { id: 1, version: 0, score: 0.9, payload: { kind: 'a' } };
  if (rest === '') {
    if (method === 'GET') {
      return [200, qdrant({
        status: 'green', optimizer_status: 'ok', points_count: 3, indexed_vectors_count: 3, segments_count: 1,
        config: { params: { vectors: { size: DIM, distance: 'Cosine' } } }, payload_schema: {},
      })];
    }
    return [200, qdrant(true)]; // PUT create, DELETE
  }
  if (method === 'PUT' && rest === '/points') return [200, qdrant({ operation_id: 0, status: 'completed' })];
  if (method === 'POST' && rest === '/points/delete') return [200, qdrant({ operation_id: 1, status: 'completed' })];
  if (method === 'POST' && rest === '/points/search') return [200, qdrant([point])];
  if (method === 'POST' && rest === '/points/query') return [200, qdrant({ points: [point] })];
  if (method === 'POST' && rest === '/points/count') return [200, qdrant({ count: 3 })];
  if (method === 'POST' && rest === '/points') return [200, qdrant([{ id: 1, payload: { kind: 'a' } }])];
  if (method === 'GET' && /^\/points\/[^/]+$/.test(rest)) return [200, qdrant({ id: 1, payload: { kind: 'a' } })];
  return [404, { error: `no route ${method} ${p}` }];
}

// Headers worth a column: everything but the transport's own.
const BORING = new Set(['host', 'connection', 'content-length', 'accept-encoding', 'accept-language',
  'sec-fetch-mode', 'x-stainless-retry-count', 'x-stainless-timeout', 'x-stainless-lang',
  'x-stainless-package-version', 'x-stainless-os', 'x-stainless-arch', 'x-stainless-runtime',
  'x-stainless-runtime-version']);

function start() {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString();
      let body = {};
      try { body = raw ? JSON.parse(raw) : {}; } catch { body = raw; }
      const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !BORING.has(k)));
      log.push({ method: req.method, path: req.url, headers, body: raw });
      const [status, out] = reply(req.method, req.url, body);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(out));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function section(title, fn) {
  const from = log.length;
  let err = '';
  try { await fn(); } catch (e) { err = String(e?.message ?? e).split('\n')[0]; }
  await new Promise((r) => setTimeout(r, 50)); // the qdrant client's background GET /
  console.log(`\n### ${title}\n`);
  if (err) console.log(`(the client raised: ${err})\n`);
  console.log('| call | method | path | headers of note | body |');
  console.log('|---|---|---|---|---|');
  for (const r of log.slice(from)) {
    const h = Object.entries(r.headers).map(([k, v]) => `${k}: ${v}`).join('<br>');
    const body = r.body.length > 300 ? `${r.body.slice(0, 300)}…` : r.body;
    console.log(`| ${r.call ?? ''} | ${r.method} | \`${r.path}\` | ${h} | \`${body.replace(/\|/g, '\\|')}\` |`);
  }
}

// Names the requests made by fn, for the table's first column.
async function call(name, fn) {
  const from = log.length;
  try { return await fn(); } finally { for (const r of log.slice(from)) r.call = name; }
}

const server = await start();
const url = `http://127.0.0.1:${server.address().port}`;
const KEY = 'KEY';

await section('openai 6.49.0 (baseURL: URL/v1, apiKey)', async () => {
  const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: KEY, maxRetries: 0 });
  await call('embeddings.create (default base64)', () => c.embeddings.create({ model: 'm', input: ['a', 'b'] }));
  await call('embeddings.create float, dimensions', () => c.embeddings.create({
    model: 'm', input: 'a', encoding_format: 'float', dimensions: 2 }));
  await call('models.list', () => c.models.list());
  await call('models.retrieve("m")', () => c.models.retrieve('m'));
  const bare = new OpenAI({ baseURL: url, apiKey: KEY, maxRetries: 0 });
  await call('baseURL without /v1: embeddings.create', () => bare.embeddings.create({ model: 'm', input: 'a' }));
});

await section('@langchain/openai 1.5.8 OpenAIEmbeddings (configuration.baseURL: URL/v1)', async () => {
  const e = new OpenAIEmbeddings({ model: 'm', apiKey: KEY, configuration: { baseURL: `${url}/v1` }, maxRetries: 0 });
  await call('embedDocuments(["a","b"])', () => e.embedDocuments(['a', 'b']));
  await call('embedQuery("a")', () => e.embedQuery('a'));
});

await section('@huggingface/inference 4.13.30 (endpoint = base URL)', async () => {
  await call('InferenceClient(KEY, {endpointUrl}).featureExtraction', () =>
    new InferenceClient(KEY, { endpointUrl: url }).featureExtraction({ inputs: ['a', 'b'] }));
  await call('InferenceClient(KEY).endpoint(url).featureExtraction', () =>
    new InferenceClient(KEY).endpoint(url).featureExtraction({ inputs: 'a' }));
  await call('HfInference(KEY).featureExtraction({endpointUrl})', () =>
    new HfInference(KEY).featureExtraction({ endpointUrl: url, inputs: 'a' }));
  await call('InferenceClient() without a token', () =>
    new InferenceClient(undefined, { endpointUrl: url }).featureExtraction({ inputs: 'a' }));
});

await section('@langchain/community 1.1.29 HuggingFaceInferenceEmbeddings (endpointUrl = base URL)', async () => {
  const e = new HuggingFaceInferenceEmbeddings({ model: 'm', apiKey: KEY, endpointUrl: url });
  await call('embedDocuments(["a","b"])', () => e.embedDocuments(['a', 'b']));
  await call('embedQuery("a")', () => e.embedQuery('a'));
});

await section('@qdrant/js-client-rest 1.18.0 QdrantClient({url, apiKey})', async () => {
  const q = new QdrantClient({ url, apiKey: KEY });
  const f = { must: [{ key: 'kind', match: { value: 'a' } }] };
  await call('(constructor: version check)', () => new Promise((r) => setTimeout(r, 50)));
  await call('createCollection', () => q.createCollection('docs', { vectors: { size: DIM, distance: 'Cosine' } }));
  await call('getCollections', () => q.getCollections());
  await call('getCollection', () => q.getCollection('docs'));
  await call('upsert (wait: true)', () => q.upsert('docs', { wait: true, points: [
    { id: 1, vector: vec(0), payload: { kind: 'a' } },
    { id: 2, vector: vec(1), payload: { kind: 'b' } }] }));
  await call('search with filter', () => q.search('docs', { vector: vec(0), limit: 2, filter: f }));
  await call('query', () => q.query('docs', { query: vec(0), limit: 2, filter: f, with_payload: true }));
  await call('count', () => q.count('docs'));
  await call('count with filter', () => q.count('docs', { filter: f }));
  await call('retrieve', () => q.retrieve('docs', { ids: [1, 2] }));
  await call('getPoint (api.getPoint)', () => q.api('points').getPoint({ collection_name: 'docs', id: 1 }));
  await call('delete by ids', () => q.delete('docs', { wait: true, points: [1] }));
  await call('delete by filter', () => q.delete('docs', { wait: true, filter: f }));
  await call('deleteCollection', () => q.deleteCollection('docs'));
});

server.close();
