// TinyBase's own SQLite persister in JSON mode (createBetterSqlite3Persister over npm
// better-sqlite3), driven from tests/test_persister_sqlite_tinybase.py.
//   node persister_sqlite_tinybase.mjs write FILE [CONFIG_JSON] -> builds a MergeableStore, saves it
//   node persister_sqlite_tinybase.mjs read FILE [CONFIG_JSON]  -> loads into a fresh MergeableStore
//   node persister_sqlite_tinybase.mjs listen FILE [CONFIG_JSON] -> starts auto-load, prints
//     {"ready":true}, then waits (30 s at most) for value "fromPython" to arrive by polling
// CONFIG_JSON is TinyBase's configOrStoreTableName ({"mode":"json",...} or "table"); default
// {"mode":"json"}. Prints one JSON line: the store's mergeable content, content hashes, tables
// and values. Non-ASCII is escaped so that the line survives any line splitting.
import Database from 'better-sqlite3';
import {createMergeableStore} from 'tinybase/mergeable-store';
import {createBetterSqlite3Persister} from 'tinybase/persisters/persister-better-sqlite3';
import {fillInteropStore, report} from './persister_common.mjs';

const [mode, file, configJson] = process.argv.slice(2);
const config = configJson ? JSON.parse(configJson) : {mode: 'json', autoLoadIntervalSeconds: 0.05};


const db = new Database(file);
const errors = [];
const store = createMergeableStore(mode === 'write' ? 'tinybase-writer' : 'tinybase-reader');
const persister = createBetterSqlite3Persister(store, db, config, undefined, (error) =>
  errors.push(String(error)),
);

if (mode === 'write') {
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
report(store);
await persister.destroy();
db.close();
