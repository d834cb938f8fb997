// qdrant.test.mjs: the official @qdrant/js-client-rest against embedd's
// Qdrant routes, configured only by url and apiKey (the client sends the
// key as "api-key: KEY", which embedd accepts beside Authorization: Bearer).
//
// One collection of 4-dimensional vectors chosen so that every cosine score
// is known exactly; the tests run in order (create, upsert, read, delete)
// and each asserts the values the previous steps leave behind.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { QdrantClient } from '@qdrant/js-client-rest';

import { qdrantKey, qdrantUrl } from './common.mjs';

const name = `clients-${process.pid}`;
const DIM = 4;
const Q = [1, 0, 0, 0];
// id: vector (unit), cosine with Q, payload kind
const points = [
  { id: 1, vector: [1, 0, 0, 0], payload: { kind: 'a', n: 1 } },      // 1
  { id: 2, vector: [0.8, 0.6, 0, 0], payload: { kind: 'a', n: 2 } },  // 0.8
  { id: 3, vector: [0, 1, 0, 0], payload: { kind: 'b', n: 3 } },      // 0
  { id: 4, vector: [0.6, 0.8, 0, 0], payload: { kind: 'b', n: 4 } },  // 0.6
  { id: 5, vector: [0.28, 0, 0.96, 0], payload: { kind: 'a', n: 5 } }, // 0.28
];
const kind = (k) => ({ must: [{ key: 'kind', match: { value: k } }] });
const TOL = 1e-5;

let client;

function assertHits(hits, want, what) {
  assert.deepEqual(hits.map((h) => h.id), want.map(([id]) => id), `${what}: ids in score order`);
  hits.forEach((h, i) => {
    assert.ok(Math.abs(h.score - want[i][1]) <= TOL, `${what}: score of ${h.id} ${h.score}, want ${want[i][1]}`);
  });
}

before(() => {
  assert.ok(qdrantUrl, 'set EMBEDD_URL (or EMBEDD_QDRANT_URL) to the server');
  client = new QdrantClient({ url: qdrantUrl, ...(qdrantKey ? { apiKey: qdrantKey } : {}) });
});

after(async () => {
  // leave nothing behind when a step in the middle failed
  await client?.deleteCollection(name).catch(() => {});
});

test('createCollection, getCollections, getCollection', async () => {
  assert.equal(await client.createCollection(name, { vectors: { size: DIM, distance: 'Cosine' } }), true);
  const { collections } = await client.getCollections();
  assert.ok(collections.some((c) => c.name === name), `${name} in ${JSON.stringify(collections)}`);
  const info = await client.getCollection(name);
  assert.equal(info.points_count, 0);
  assert.equal(info.config.params.vectors.size, DIM);
  assert.equal(info.config.params.vectors.distance, 'Cosine');
});

test('upsert points with payloads (wait: true)', async () => {
  const r = await client.upsert(name, { wait: true, points });
  assert.equal(r.status, 'completed');
  assert.equal((await client.getCollection(name)).points_count, points.length);
});

test('search: score order and scores; a payload filter keeps only matches', async () => {
  const all = await client.search(name, { vector: Q, limit: 10 });
  assertHits(all, [[1, 1], [2, 0.8], [4, 0.6], [5, 0.28], [3, 0]], 'no filter');
  assert.deepEqual(all[0].payload, { kind: 'a', n: 1 }, 'payload comes back (with_payload is the default)');
  const a = await client.search(name, { vector: Q, limit: 10, filter: kind('a') });
  assertHits(a, [[1, 1], [2, 0.8], [5, 0.28]], 'kind a');
  assert.ok(a.every((h) => h.payload.kind === 'a'));
  const top = await client.search(name, { vector: Q, limit: 2, filter: kind('b') });
  assertHits(top, [[4, 0.6], [3, 0]], 'kind b, limit 2');
});

test('query: a vector query with a filter', async () => {
  const r = await client.query(name, { query: Q, filter: kind('b'), limit: 5, with_payload: true });
  assertHits(r.points, [[4, 0.6], [3, 0]], 'query kind b');
  assert.deepEqual(r.points[0].payload, { kind: 'b', n: 4 });
  const one = await client.query(name, { query: [0, 0, 1, 0], limit: 1 });
  assertHits(one.points, [[5, 0.96]], 'query top 1');
});

test('count, with and without a filter', async () => {
  assert.equal((await client.count(name)).count, 5);
  assert.equal((await client.count(name, { filter: kind('a') })).count, 3);
  assert.equal((await client.count(name, { filter: kind('c') })).count, 0);
});

test('retrieve by ids, and one point by id', async () => {
  const got = await client.retrieve(name, { ids: [3, 1], with_vector: true });
  const byId = Object.fromEntries(got.map((p) => [p.id, p]));
  assert.deepEqual(Object.keys(byId).sort(), ['1', '3']);
  assert.deepEqual(byId[3].payload, { kind: 'b', n: 3 });
  const v = byId[1].vector;
  assert.equal(v.length, DIM);
  v.forEach((x, i) => assert.ok(Math.abs(x - points[0].vector[i]) <= TOL, `vector of 1: ${v}`));
  const p = await client.api('points').getPoint({ collection_name: name, id: 4 });
  assert.equal(p.data.result.id, 4);
  assert.deepEqual(p.data.result.payload, { kind: 'b', n: 4 });
});

test('delete points by id, then by filter', async () => {
  assert.equal((await client.delete(name, { wait: true, points: [2] })).status, 'completed');
  assert.equal((await client.count(name)).count, 4);
  assertHits(await client.search(name, { vector: Q, limit: 10, filter: kind('a') }),
    [[1, 1], [5, 0.28]], 'kind a after deleting 2');
  assert.equal((await client.delete(name, { wait: true, filter: kind('b') })).status, 'completed');
  assert.equal((await client.count(name)).count, 2);
  assert.equal((await client.count(name, { filter: kind('b') })).count, 0);
});

test('deleteCollection: gone from the list, 404 after', async () => {
  assert.equal(await client.deleteCollection(name), true);
  const { collections } = await client.getCollections();
  assert.ok(!collections.some((c) => c.name === name));
  await assert.rejects(client.getCollection(name), (e) => e.status === 404);
});
