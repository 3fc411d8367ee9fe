// TinyBase WsSynchronizer clients for benchmarks/ws.py, all in this one Node process.
// Usage: node bench_clients.mjs <url> <clients> <cells> <samples> <timeout_seconds> [rounds]
// Prints one JSON line: {fill_seconds, fills, latency_ms}. Workload: per round k, client 0
// writes <cells> integer cells (rows of 10 in table "t<k>") in one transaction; a fill is the
// time until every other client holds them all (fill_seconds: the median). Before that,
// <samples> one-way latencies: client 0 sets value "ping", client 1's value listener sees it
// (same process, same clock).
import {WebSocket} from 'ws';
import {performance} from 'node:perf_hooks';
import {createMergeableStore} from 'tinybase';
import {createWsSynchronizer} from 'tinybase/synchronizers/synchronizer-ws-client';

const [url, clientsArg, cellsArg, samplesArg, timeoutArg, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg ?? 1);
const clients = Number(clientsArg);
const cells = Number(cellsArg);
const samples = Number(samplesArg);
const timeout = Number(timeoutArg) * 1000;
const rows = Math.floor(cells / 10);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const stores = [];
const syncs = [];
for (let i = 0; i < clients; i++) {
  const store = createMergeableStore('bench' + i);
  const ws = new WebSocket(url, {perMessageDeflate: false, maxPayload: 256 * 1024 * 1024});
  const sync = await createWsSynchronizer(store, ws, 5);
  await sync.startSync();
  stores.push(store);
  syncs.push(sync);
}
await sleep(200);

const latencies = [];
if (samples > 0) {
  let sentAt = 0;
  let seen = -1;
  stores[1].addValueListener('ping', (_s, _id, value) => {
    latencies.push(now() - sentAt);
    seen = value;
  });
  for (let i = 0; i < samples; i++) {
    sentAt = now();
    stores[0].setValue('ping', i);
    const end = now() + 5000;
    while (seen !== i && now() < end) await new Promise((r) => setImmediate(r));
  }
}
await sleep(200);
const fills = [];
for (let k = 0; k < rounds; k++) {
  const table = 't' + k;
  const full = (store) =>
    store.getRowCount(table) === rows && store.hasCell(table, 'r' + (rows - 1), 'c9');
  const start = now();
  stores[0].transaction(() => {
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < 10; c++) stores[0].setCell(table, 'r' + r, 'c' + c, r * 10 + c);
    }
  });
  while (now() - start < timeout) {
    if (stores.slice(1).every(full)) {
      fills.push((now() - start) / 1000);
      break;
    }
    await sleep(1);
  }
  await sleep(200);
}
const sorted = [...fills].sort((a, b) => a - b);
const fill = fills.length === rounds ? sorted[Math.floor(sorted.length / 2)] : null;

for (const sync of syncs) await sync.destroy();
console.log(JSON.stringify({fill_seconds: fill, fills, latency_ms: latencies}));
process.exit(0);
