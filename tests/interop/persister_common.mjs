// What the persister interop scripts share (persister_file, persister_postgres,
// persister_sqlite_tinybase): the content they write, which tests.helpers.fill_interop_store
// writes on the Python side, and the one JSON line each prints.

const UNDEFINED = '\uFFFC';

// Every kind of cell and value, odd ids, then deletions.
export const fillInteropStore = (store) => {
  store.transaction(() => {
    store.setCell('t1', 'r1', 'text', 'héllo wörld 😀 \u2028 "quoted" \\ back');
    store.setCell('t1', 'r1', 'float', 1.5);
    store.setCell('t1', 'r1', 'int', -3);
    store.setCell('t1', 'r1', 'big', 1e21);
    store.setCell('t1', 'r1', 'bool', true);
    store.setCell('t1', 'r1', 'null', null);
    store.setCell('t1', 'r1', 'object', {a: [1, {b: null}], 2: 'x', é: 'ü'});
    store.setCell('t1', 'r1', 'array', [1, 'two', null, {three: 3}]);
    store.setCell('t1', 'r2', 'gone', 'soon');
    store.setRow('t2', 'r1', {c: 1});
    store.setCell('t-1', '0', '1', 'integer-like ids');
    store.setValues({v: 'ünï', vnull: null, vobj: {k: [1]}, vdel: 1});
  });
  store.delCell('t1', 'r2', 'gone');
  store.delRow('t2', 'r1');
  store.delValue('vdel');
};

// One JSON line: tables and values, after the mergeable content and hashes (`shape`
// 'mergeable'), the plain content ('plain') or nothing more ('tables'). Non-ASCII is escaped
// so that the line survives any line splitting (U+2028 and friends).
export const report = (store, shape = 'mergeable') => {
  const head =
    shape === 'mergeable'
      ? {content: store.getMergeableContent(), hashes: store.getMergeableContentHashes()}
      : shape === 'plain'
        ? {content: store.getContent()}
        : {};
  const json = JSON.stringify(
    {...head, tables: store.getTables(), values: store.getValues()},
    (_key, value) => (value === undefined ? UNDEFINED : value),
  );
  console.log(
    json.replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')),
  );
};
