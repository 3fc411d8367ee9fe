// Node heap bytes per cell of a TinyBase MergeableStore holding N cells (run with --expose-gc).
// Same shape as the Python subjects: table "t", rows "r<i>", 10 integer cells per row.
// Prints one JSON line: {"cells": N, "heap_bytes": ..., "bytes_per_cell": ...}.
import {createMergeableStore} from 'tinybase/mergeable-store';

const CELLS_PER_ROW = 10;
const cells = Number(process.argv[2] ?? 100000);
const rows = Math.max(1, Math.floor(cells / CELLS_PER_ROW));
const settle = () => {
  for (let i = 0; i < 3; i++) globalThis.gc();
  return process.memoryUsage().heapUsed;
};
const store0 = createMergeableStore(); // module code and first-store overhead outside the delta
store0.setCell('x', 'x', 'x', 1);
const before = settle();
const store = createMergeableStore();
for (let i = 0; i < rows; i++) {
  const row = {};
  for (let j = 0; j < CELLS_PER_ROW; j++) row['c' + j] = i * CELLS_PER_ROW + j;
  store.setRow('t', 'r' + i, row);
}
store.getMergeableContentHashes(); // hashes settled, as after any sync
const after = settle();
const total = rows * CELLS_PER_ROW;
console.log(JSON.stringify({cells: total, heap_bytes: after - before,
  bytes_per_cell: (after - before) / total, kept: store.getRowCount('t')}));
