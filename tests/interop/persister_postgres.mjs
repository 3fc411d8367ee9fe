// TinyBase's own createPostgresPersister (JSON mode), driven from tests/test_persister_postgres.py.
//   node persister_postgres.mjs write SOCKET DB  -> builds a MergeableStore, saves it
//   node persister_postgres.mjs read SOCKET DB   -> loads into a fresh MergeableStore
//   node persister_postgres.mjs listen SOCKET DB -> starts auto-load, prints {"ready":true},
//     then waits (30 s at most) for value "fromPython" to arrive through NOTIFY
//   node persister_postgres.mjs tabular-write SOCKET DB -> a plain Store saved in tabular mode
//   node persister_postgres.mjs tabular-read SOCKET DB  -> loads it (TABULAR_CONFIG) into a Store
// SOCKET is the server's Unix socket file (.s.PGSQL.<port>); the user is postgres.
// Prints one JSON line: the store's mergeable content, content hashes, tables and values.
// Non-ASCII is escaped so that the line survives any line splitting (U+2028 and friends).
import postgres from 'postgres';
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createStore} from 'tinybase/store';
import {createPostgresPersister} from 'tinybase/persisters/persister-postgres';
import {fillInteropStore, report} from './persister_common.mjs';

const [mode, socket, database] = process.argv.slice(2);

const TABULAR_CONFIG = {
  mode: 'tabular',
  tables: {
    load: {tb_t1: 't1', tb_t2: {tableId: 't2', rowIdColumnName: 'id'}},
    save: {t1: 'tb_t1', t2: {tableName: 'tb_t2', rowIdColumnName: 'id'}},
  },
  values: {load: true, save: true},
};
const tabular = mode.startsWith('tabular-');


const sql = postgres({path: socket, database, username: 'postgres', onnotice: () => {}});
const errors = [];
const store = tabular
  ? createStore()
  : createMergeableStore(mode === 'write' ? 'tinybase-writer' : 'tinybase-reader');
const persister = await createPostgresPersister(
  store,
  sql,
  tabular ? TABULAR_CONFIG : undefined,
  undefined,
  (error) => errors.push(String(error)),
);

if (mode === 'tabular-write') {
  store.transaction(() => {
    store.setRow('t1', 'r1', {text: 'héllo 😀 "q"', num: 1.5, obj: {a: [1, null]}, nil: null});
    store.setRow('t1', 'r2', {text: 'two', num: -3, obj: [1, 'x'], nil: true});
    store.setRow('t2', 'a', {c: 1});
    store.setRow('t2', 'b', {c: 2});
    store.setValues({v: 'ünï', vobj: {k: [1]}, vnull: null});
  });
  store.delRow('t2', 'b');
  await persister.save();
} else if (mode === 'tabular-read') {
  await persister.load();
} else if (mode === 'write') {
  fillInteropStore(store);
  await persister.save();
} else if (mode === 'read') {
  await persister.load();
} else if (mode === 'listen') {
  await persister.startAutoLoad();
  console.log(JSON.stringify({ready: true}));
  const deadline = Date.now() + 30000;
  while (store.getValue('fromPython') === undefined && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
} else {
  throw new Error('mode must be write, read or listen');
}
if (errors.length) {
  throw new Error('TinyBase reported: ' + errors.join('; '));
}
report(store, tabular ? 'tables' : 'mergeable');
await persister.destroy();
await sql.end({timeout: 5});
