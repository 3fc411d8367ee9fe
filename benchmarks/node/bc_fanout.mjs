// TinyBase's own BroadcastChannelSynchronizer across Node worker threads: 1 writer, N readers.
// Same workload as the Python subjects: table "t", rows "r<i>", 10 integer cells per row,
// one transaction per row. Prints one JSON line: {"seconds": ..., "per_reader": [...]}.
// Usage: node bc_fanout.mjs <readers> <cells> <timeout_seconds>
import {Worker, isMainThread, parentPort, workerData} from 'node:worker_threads';
import {performance} from 'node:perf_hooks';
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createBroadcastChannelSynchronizer} from 'tinybase/synchronizers/synchronizer-broadcast-channel';

const CELLS_PER_ROW = 10;
const now = () => performance.timeOrigin + performance.now(); // shared wall-clock base

if (isMainThread) {
  const readers = Number(process.argv[2] ?? 3);
  const cells = Number(process.argv[3] ?? 10000);
  const timeout = Number(process.argv[4] ?? 120);
  const channel = 'bench-' + process.pid;
  const rows = Math.max(1, Math.floor(cells / CELLS_PER_ROW));
  const workers = [];
  const ready = [];
  const finishes = new Array(readers).fill(null);
  let start = null;
  const spawn = (role, index) =>
    new Promise((resolve) => {
      const w = new Worker(new URL(import.meta.url), {workerData: {role, index, rows, channel}});
      w.on('message', (m) => {
        if (m.type == 'ready') resolve();
        else if (m.type == 'start') start = m.at;
        else if (m.type == 'done') finishes[m.index] = m.at;
      });
      w.on('error', (e) => console.error(e));
      workers.push(w);
    });
  for (let i = 0; i < readers; i++) ready.push(spawn('reader', i));
  ready.push(spawn('writer', -1));
  await Promise.all(ready);
  const writer = workers[workers.length - 1];
  writer.postMessage('go');
  const deadline = now() + timeout * 1000;
  while (now() < deadline && (start == null || finishes.some((f) => f == null))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const per = finishes.map((f) => (f == null || start == null ? null : (f - start) / 1000));
  const seconds = per.some((p) => p == null) ? null : Math.max(...per);
  console.log(JSON.stringify({seconds, per_reader: per}));
  for (const w of workers) await w.terminate();
  process.exit(0);
} else {
  const {role, index, rows, channel} = workerData;
  const store = createMergeableStore();
  const sync = createBroadcastChannelSynchronizer(store, channel);
  await sync.startSync();
  if (role == 'reader') {
    let done = false;
    store.addDidFinishTransactionListener(() => {
      if (!done && store.getRowCount('t') >= rows) {
        done = true;
        parentPort.postMessage({type: 'done', index, at: now()});
      }
    });
    parentPort.postMessage({type: 'ready'});
  } else {
    parentPort.on('message', () => {
      const at = now();
      parentPort.postMessage({type: 'start', at});
      for (let i = 0; i < rows; i++) {
        const row = {};
        for (let j = 0; j < CELLS_PER_ROW; j++) row['c' + j] = i * CELLS_PER_ROW + j;
        store.setRow('t', 'r' + i, row);
      }
    });
    parentPort.postMessage({type: 'ready'});
  }
}
