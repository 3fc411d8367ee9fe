// TinyBase's own createFilePersister, driven from tests/test_persister_interop.py.
//   node persister_file.mjs write PATH  -> builds a MergeableStore, saves it to PATH
//   node persister_file.mjs read PATH   -> loads PATH into a fresh MergeableStore
//   node persister_file.mjs append PATH -> loads PATH, adds a change, saves it back
//   node persister_file.mjs write-plain|read-plain PATH -> the same with a plain Store
//   node persister_file.mjs mutate PATH -> auto-saves a store whose mutator listener derives
//     t/r/double from t/r/c, has another store write c=4 to PATH, loads PATH (hadMutated)
// Prints one JSON line: the store's mergeable content, content hashes, tables and values.
// Non-ASCII is escaped so that the line survives any line splitting (U+2028 and friends).
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createStore} from 'tinybase/store';
import {createFilePersister} from 'tinybase/persisters/persister-file';
import {fillInteropStore, report} from './persister_common.mjs';

const [mode, path] = process.argv.slice(2);

const plain = mode.endsWith('-plain');

const errors = [];
const store = plain
  ? createStore()
  : createMergeableStore(mode === 'write' ? 'tinybase-writer' : 'tinybase-reader');
const persister = createFilePersister(store, path, (error) => errors.push(String(error)));

if (mode === 'write') {
  fillInteropStore(store);
  await persister.save();
} else if (mode === 'write-plain') {
  store.setTables({
    t1: {r1: {text: 'héllo 😀 \u2028', n: 1.5, b: false, z: null, o: {a: [1], 2: 'x'}}},
    't-1': {0: {1: 'integer-like ids'}},
  });
  store.setValues({v: 'ünï', vnull: null, varr: [1, 'two']});
  await persister.save();
} else if (mode === 'read' || mode === 'read-plain') {
  await persister.load();
} else if (mode === 'mutate') {
  store.addCellListener('t', null, 'c', (s, tableId, rowId, _cellId, cell) => {
    if (typeof cell === 'number') s.setCell(tableId, rowId, 'double', cell * 2);
  }, true);
  await persister.startAutoSave();
  const other = createMergeableStore('tinybase-writer');
  other.setCell('t', 'r', 'c', 4);
  const otherPersister = createFilePersister(other, path);
  await otherPersister.save();
  await otherPersister.destroy();
  await persister.load();
} else if (mode === 'append') {
  await persister.load();
  store.setCell('t1', 'r1', 'fromTinyBase', 'added');
  store.delValue('v');
  await persister.save();
} else {
  throw new Error('mode must be write, read, append or mutate');
}
if (errors.length) {
  throw new Error('TinyBase reported: ' + errors.join('; '));
}
report(store, plain ? 'plain' : 'mergeable');
await persister.destroy();
