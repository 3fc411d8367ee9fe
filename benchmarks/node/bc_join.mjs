// A new Node worker thread joining a TinyBase BroadcastChannel whose only other member holds
// N cells (table "t", rows "r<i>", 10 integer cells per row). Prints one JSON line:
// {"seconds": time from the joiner's createMergeableStore to holding every row, or null}.
// Usage: node bc_join.mjs <cells> <timeout_seconds>
import {Worker, isMainThread, parentPort, workerData} from 'node:worker_threads';
import {performance} from 'node:perf_hooks';
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createBroadcastChannelSynchronizer} from 'tinybase/synchronizers/synchronizer-broadcast-channel';

const CELLS_PER_ROW = 10;
const now = () => performance.timeOrigin + performance.now();

if (isMainThread) {
  const cells = Number(process.argv[2] ?? 10000);
  const timeout = Number(process.argv[3] ?? 30);
  const rows = Math.max(1, Math.floor(cells / CELLS_PER_ROW));
  const channel = 'join-' + process.pid;
  const start = (role) =>
    new Promise((resolve) => {
      const w = new Worker(new URL(import.meta.url), {workerData: {role, rows, channel}});
      w.on('message', (m) => resolve([w, m]));
      w.on('error', (e) => console.error(e));
    });
  const [holder] = await start('holder');
  const result = await Promise.race([
    start('joiner').then(([w, m]) => [w, m.seconds]),
    new Promise((r) => setTimeout(() => r([null, null]), timeout * 1000)),
  ]);
  console.log(JSON.stringify({seconds: result[1]}));
  process.exit(0);
} else {
  const {role, rows, channel} = workerData;
  const t0 = now();
  const store = createMergeableStore();
  if (role == 'holder') {
    store.transaction(() => {
      for (let i = 0; i < rows; i++) {
        const row = {};
        for (let j = 0; j < CELLS_PER_ROW; j++) row['c' + j] = i * CELLS_PER_ROW + j;
        store.setRow('t', 'r' + i, row);
      }
    });
    await createBroadcastChannelSynchronizer(store, channel).startSync();
    parentPort.postMessage({});
  } else {
    let done = false;
    const check = () => {
      if (!done && store.getRowCount('t') >= rows) {
        done = true;
        parentPort.postMessage({seconds: (now() - t0) / 1000});
      }
    };
    store.addDidFinishTransactionListener(check);
    await createBroadcastChannelSynchronizer(store, channel).startSync();
    check();
  }
}
