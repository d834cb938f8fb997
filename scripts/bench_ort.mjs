// bench_ort.mjs: the ONNX Runtime side of scripts/bench_compare.py.
//
//   node scripts/bench_ort.mjs --ort-dir DIR --model M.onnx --ids IDS.jsonl
//       [--threads 2] [--batch-size 32] [--passes 3] [--pooling mean|cls]
//       [--normalize 1] [--latency-ids LAT.jsonl] [--latency-runs 50] [--dump OUT.f32]
//
// DIR holds node_modules/onnxruntime-node. IDS.jsonl has one JSON array of
// token ids per line ([CLS] ... [SEP], as `embedd tokenize` prints them);
// nothing is tokenised here. The texts are sorted by decreasing length and
// run in padded batches of --batch-size (pad id 0, attention_mask 0 there,
// token_type_ids 0), session options intraOpNumThreads=--threads,
// interOpNumThreads=1, graphOptimizationLevel 'all'. Each batch's
// last_hidden_state is pooled (mean over the mask, or CLS) and
// L2-normalised in JS. One untimed warm-up pass, then --passes timed passes;
// the best is reported. Single-text latency: the first line of LAT.jsonl
// alone (batch 1), forward + pooling, --latency-runs times after 5 warm-up
// runs.
//
// Prints one JSON line: texts_per_s (best pass), seconds, passes,
// p50_ms, p99_ms (latency), latency_tokens, max_rss_mb (this process), ort.
// --dump writes the embeddings, n x C little-endian float32 in IDS order.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

function parseArgs(argv) {
  const a = {
    ortDir: null, model: null, ids: null, threads: 2, batchSize: 32, passes: 3,
    pooling: 'mean', normalize: 1, latencyIds: null, latencyRuns: 50, dump: null,
  };
  const names = {
    '--ort-dir': 'ortDir', '--model': 'model', '--ids': 'ids', '--threads': 'threads',
    '--batch-size': 'batchSize', '--passes': 'passes', '--pooling': 'pooling',
    '--normalize': 'normalize', '--latency-ids': 'latencyIds',
    '--latency-runs': 'latencyRuns', '--dump': 'dump',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = names[argv[i]];
    if (k === undefined || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    a[k] = typeof a[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!a.ortDir || !a.model || !a.ids) throw new Error('--ort-dir, --model and --ids are required');
  if (a.pooling !== 'mean' && a.pooling !== 'cls') throw new Error('--pooling: mean or cls');
  return a;
}

// Feeds of one padded batch of id arrays.
function makeFeeds(ort, seqs) {
  const B = seqs.length;
  let T = 0;
  for (const s of seqs) T = Math.max(T, s.length);
  const ids = new BigInt64Array(B * T);
  const mask = new BigInt64Array(B * T);
  const types = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) {
    const s = seqs[b];
    for (let t = 0; t < s.length; t++) {
      ids[b * T + t] = BigInt(s[t]);
      mask[b * T + t] = 1n;
    }
  }
  const dims = [B, T];
  return {
    T,
    feeds: {
      input_ids: new ort.Tensor('int64', ids, dims),
      attention_mask: new ort.Tensor('int64', mask, dims),
      token_type_ids: new ort.Tensor('int64', types, dims),
    },
  };
}

// Pools hidden (B, T, C) into out rows (C floats each) and L2-normalises.
function poolInto(hidden, seqs, T, C, pooling, normalize, outRows) {
  for (let b = 0; b < seqs.length; b++) {
    const n = seqs[b].length;
    const row = outRows[b];
    row.fill(0);
    const base = b * T * C;
    if (pooling === 'cls') {
      for (let c = 0; c < C; c++) row[c] = hidden[base + c];
    } else {
      for (let t = 0; t < n; t++) {
        const off = base + t * C;
        for (let c = 0; c < C; c++) row[c] += hidden[off + c];
      }
      for (let c = 0; c < C; c++) row[c] /= n;
    }
    if (normalize) {
      let ss = 0;
      for (let c = 0; c < C; c++) ss += row[c] * row[c];
      const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
      for (let c = 0; c < C; c++) row[c] *= inv;
    }
  }
}

async function runPass(ort, session, seqs, order, batchSize, pooling, normalize, out, C) {
  for (let i = 0; i < order.length; i += batchSize) {
    const idx = order.slice(i, i + batchSize);
    const batch = idx.map((j) => seqs[j]);
    const { T, feeds } = makeFeeds(ort, batch);
    const res = await session.run(feeds);
    const h = res.last_hidden_state;
    const rows = idx.map((j) => out.subarray(j * C, (j + 1) * C));
    poolInto(h.data, batch, T, C, pooling, normalize, rows);
  }
}

function percentile(sorted, q) {
  const k = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[k];
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const require = createRequire(join(resolve(a.ortDir), 'package.json'));
  const ort = require('onnxruntime-node');
  const seqs = readFileSync(a.ids, 'utf8').split('\n').filter((l) => l.length > 0)
    .map((l) => JSON.parse(l));
  const session = await ort.InferenceSession.create(a.model, {
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  // Hidden size from a one-token-batch probe.
  const probe = await session.run(makeFeeds(ort, [seqs[0]]).feeds);
  const C = probe.last_hidden_state.dims[2];
  const order = seqs.map((_, i) => i).sort((x, y) => seqs[y].length - seqs[x].length || x - y);
  const out = new Float32Array(seqs.length * C);

  await runPass(ort, session, seqs, order, a.batchSize, a.pooling, a.normalize, out, C);
  let best = Infinity;
  for (let p = 0; p < a.passes; p++) {
    const t0 = process.hrtime.bigint();
    await runPass(ort, session, seqs, order, a.batchSize, a.pooling, a.normalize, out, C);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, s);
  }

  let p50 = null;
  let p99 = null;
  let latTokens = null;
  if (a.latencyIds && a.latencyRuns > 0) {
    const one = [JSON.parse(readFileSync(a.latencyIds, 'utf8').split('\n')[0])];
    latTokens = one[0].length;
    const row = [new Float32Array(C)];
    const times = [];
    for (let r = 0; r < 5 + a.latencyRuns; r++) {
      const t0 = process.hrtime.bigint();
      const { T, feeds } = makeFeeds(ort, one);
      const res = await session.run(feeds);
      poolInto(res.last_hidden_state.data, one, T, C, a.pooling, a.normalize, row);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r >= 5) times.push(ms);
    }
    times.sort((x, y) => x - y);
    p50 = percentile(times, 0.5);
    p99 = percentile(times, 0.99);
  }
  if (a.dump) writeFileSync(a.dump, Buffer.from(out.buffer, out.byteOffset, out.byteLength));
  const rss = process.resourceUsage().maxRSS / 1024;
  console.log(JSON.stringify({
    engine: 'onnxruntime-node', ort: ort.env.versions ? ort.env.versions.node : null,
    n_texts: seqs.length, texts_per_s: seqs.length / best, seconds: best, passes: a.passes,
    p50_ms: p50, p99_ms: p99, latency_tokens: latTokens, max_rss_mb: rss, threads: a.threads,
  }));
  await session.release();
}

main().catch((e) => {
  console.error(`bench_ort.mjs: ${e.stack || e}`);
  process.exit(1);
});
