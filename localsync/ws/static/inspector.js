// localsync inspector page: talks JSON to <prefix>/socket (see localsync/ws/inspector.py).
// Every piece of data reaches the DOM through textContent or an input's value, never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const token = new URLSearchParams(location.search).get("token");
  let socket = null;
  let selected = new URLSearchParams(location.hash.slice(1)).get("room");
  let retry = 500;
  let readOnly = false; // (the source only shows: fields are disabled, forms hidden)
  let autoSelect = false; // (one store: select its room as soon as it is listed)
  // table id -> {section, thead row, tbody, cellIds: [], rows: Map(row id -> {tr, tds: Map})}
  let tables = new Map();
  let values = new Map(); // value id -> {tr, input}

  function socketUrl() {
    const url = new URL("socket", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = token ? "?token=" + encodeURIComponent(token) : "";
    url.hash = "";
    return url.href;
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function setStatus(text, cls) {
    const node = $("status");
    node.textContent = text;
    node.className = "status " + cls;
  }

  function showError(text) {
    $("error").textContent = text || "";
  }

  function connect() {
    setStatus("connecting", "connecting");
    socket = new WebSocket(socketUrl());
    socket.onopen = () => {
      retry = 500;
      setStatus("live", "open");
      if (selected !== null) send({ type: "watch", room: selected });
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      const handler = handlers[message.type];
      if (handler) handler(message);
    };
    socket.onclose = () => {
      setStatus("disconnected, retrying", "closed");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  // ---------------------------------------------------------------- values and typing

  function kindOf(value) {
    if (typeof value === "number") return "number";
    if (typeof value === "boolean") return "boolean";
    if (typeof value === "string") return "string";
    return "other"; // objects, arrays, null: shown as JSON, read-only here
  }

  function display(value) {
    return kindOf(value) === "string" ? value : JSON.stringify(value);
  }

  // the text typed in a field, as a value of `kind`; undefined when it is not one
  function parse(text, kind) {
    if (kind === "number") {
      const number = Number(text);
      return text.trim() !== "" && Number.isFinite(number) ? number : undefined;
    }
    if (kind === "boolean") {
      if (text === "true") return true;
      if (text === "false") return false;
      return undefined;
    }
    return text;
  }

  function setInput(input, value, flash) {
    const kind = value === undefined ? "string" : kindOf(value);
    input.dataset.kind = kind;
    input.className = kind;
    input.disabled = readOnly || kind === "other";
    const text = value === undefined ? "" : display(value);
    input.title = kind === "other" ? "objects and arrays cannot be edited here: " + text.slice(0, 500)
      : text.length > 12 ? kind + ": " + text.slice(0, 500) : kind;
    if (document.activeElement === input && input.dataset.dirty === "1") return;
    input.value = text;
    input.dataset.shown = text;
    input.dataset.dirty = "";
    if (flash) {
      const td = input.parentNode;
      td.classList.add("flash");
      setTimeout(() => td.classList.remove("flash"), 50);
    }
  }

  function editable(onCommit) {
    const input = el("input");
    input.addEventListener("input", () => { input.dataset.dirty = "1"; });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        input.value = input.dataset.shown || "";
        input.dataset.dirty = "";
        input.blur();
      } else if (event.key === "Enter") {
        event.preventDefault();
        const value = parse(input.value, input.dataset.kind || "string");
        if (value === undefined) {
          showError("not a " + input.dataset.kind + ": " + input.value);
          return;
        }
        showError("");
        input.dataset.dirty = "";
        input.dataset.shown = input.value;
        onCommit(value);
        input.blur();
      }
    });
    input.addEventListener("blur", () => {
      if (input.dataset.dirty === "1") {
        input.value = input.dataset.shown || "";
        input.dataset.dirty = "";
      }
    });
    return input;
  }

  // ------------------------------------------------------------------------- tables

  function tableView(tableId) {
    let view = tables.get(tableId);
    if (view) return view;
    const section = el("section", "table");
    section.dataset.table = tableId;
    const caption = el("div", "table-caption");
    caption.append(el("span", null, tableId), el("span", "meta"));
    const table = el("table", "data");
    const head = el("tr");
    head.append(el("th", null, "row id"));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    section.append(caption, table);
    view = { section, head, body: table.tBodies[0], count: caption.lastChild,
      cellIds: [], rows: new Map() };
    const siblings = [...tables.keys(), tableId].sort();
    const next = siblings[siblings.indexOf(tableId) + 1];
    $("tables").insertBefore(section, next === undefined ? null : tables.get(next).section);
    tables.set(tableId, view);
    return view;
  }

  function countRows(view) {
    const n = view.rows.size;
    view.count.textContent = n + (n === 1 ? " row" : " rows");
  }

  function cellTd(tableId, rowId, cellId) {
    const td = el("td");
    td.dataset.cell = cellId;
    td.append(editable((value) =>
      send({ type: "set_cell", table: tableId, row: rowId, cell: cellId, value })));
    return td;
  }

  function addColumn(view, tableId, cellId) {
    view.cellIds.push(cellId);
    view.head.append(el("th", null, cellId));
    for (const [rowId, row] of view.rows) {
      const td = cellTd(tableId, rowId, cellId);
      row.tds.set(cellId, td);
      row.tr.append(td);
    }
  }

  function rowView(view, tableId, rowId) {
    let row = view.rows.get(rowId);
    if (row) return row;
    const tr = el("tr");
    tr.dataset.row = rowId;
    tr.append(el("td", "row-id", rowId));
    row = { tr, tds: new Map() };
    for (const cellId of view.cellIds) {
      const td = cellTd(tableId, rowId, cellId);
      row.tds.set(cellId, td);
      tr.append(td);
    }
    view.body.append(tr);
    view.rows.set(rowId, row);
    countRows(view);
    return row;
  }

  function setCell(tableId, rowId, cellId, value, flash) {
    const view = tableView(tableId);
    if (!view.cellIds.includes(cellId)) addColumn(view, tableId, cellId);
    const row = rowView(view, tableId, rowId);
    setInput(row.tds.get(cellId).firstChild, value, flash);
  }

  function delCell(tableId, rowId, cellId) {
    const view = tables.get(tableId);
    const row = view && view.rows.get(rowId);
    const td = row && row.tds.get(cellId);
    if (td) setInput(td.firstChild, undefined, true);
  }

  function delRow(tableId, rowId) {
    const view = tables.get(tableId);
    const row = view && view.rows.get(rowId);
    if (!row) return;
    row.tr.remove();
    view.rows.delete(rowId);
    countRows(view);
    if (view.rows.size === 0) delTable(tableId);
  }

  function delTable(tableId) {
    const view = tables.get(tableId);
    if (!view) return;
    view.section.remove();
    tables.delete(tableId);
  }

  // ------------------------------------------------------------------------- values

  function setValue(valueId, value, flash) {
    let view = values.get(valueId);
    if (!view) {
      const tr = el("tr");
      tr.dataset.value = valueId;
      const td = el("td");
      const input = editable((v) => send({ type: "set_value", id: valueId, value: v }));
      td.append(input);
      tr.append(el("td", "row-id", valueId), td);
      const ids = [...values.keys(), valueId].sort();
      const next = ids[ids.indexOf(valueId) + 1];
      $("values").tBodies[0].insertBefore(tr, next === undefined ? null : values.get(next).tr);
      view = { tr, input };
      values.set(valueId, view);
    }
    setInput(view.input, value, flash);
  }

  function delValue(valueId) {
    const view = values.get(valueId);
    if (!view) return;
    view.tr.remove();
    values.delete(valueId);
  }

  // ---------------------------------------------------------------------- messages

  function clearRoom() {
    tables = new Map();
    values = new Map();
    $("tables").replaceChildren();
    $("values").tBodies[0].replaceChildren();
  }

  function select(room) {
    selected = room;
    history.replaceState(null, "", "#" + new URLSearchParams({ room }).toString());
    clearRoom();
    $("room-heading").textContent = "Room " + (room === "" ? "(empty path)" : room);
    $("room-hint").hidden = true;
    $("room").hidden = false;
    for (const li of $("rooms").children) li.classList.toggle("selected", li.dataset.room === room);
    send({ type: "watch", room });
  }

  const handlers = {
    hello(message) {
      $("title").textContent = message.title || "";
      autoSelect = message.mode === "store";
      readOnly = message.read_only === true;
      document.body.classList.toggle("read-only", readOnly);
    },
    rooms(message) {
      // each room keeps its <li> (updated in place), so a click never lands on a stale one
      const list = $("rooms");
      const old = new Map([...list.children].map((li) => [li.dataset.room, li]));
      for (const room of message.rooms) {
        let li = old.get(room.id);
        old.delete(room.id);
        if (!li) {
          li = el("li");
          li.dataset.room = room.id;
          li.append(el("div", "room-id", room.id === "" ? "(empty path)" : room.id),
            el("div", "meta"), el("ul", "clients"));
          li.addEventListener("click", () => select(room.id));
        }
        li.classList.toggle("selected", room.id === selected);
        const n = room.clients.length;
        const changed = room.last_change ? new Date(room.last_change).toLocaleTimeString() : "-";
        li.children[1].textContent =
          n + (n === 1 ? " client" : " clients") + " · last change " + changed;
        li.children[2].replaceChildren(...room.clients.map((id) => el("li", null, id)));
        list.append(li); // (in the server's order)
      }
      for (const li of old.values()) li.remove();
      $("no-rooms").hidden = message.rooms.length > 0;
      if (selected === null && autoSelect && message.rooms.length) selected = message.rooms[0].id;
      if (selected !== null && $("room").hidden && message.rooms.some((r) => r.id === selected)) {
        select(selected);
      }
    },
    stats(message) {
      const body = $("stats").tBodies[0];
      body.replaceChildren();
      for (const [name, count] of Object.entries(message.stats)) {
        const tr = el("tr");
        tr.append(el("td", null, name.replace(/_/g, " ")), el("td", null, String(count)));
        body.append(tr);
      }
    },
    snapshot(message) {
      if (message.room !== selected) return;
      clearRoom();
      for (const [tableId, rows] of Object.entries(message.tables)) {
        for (const [rowId, row] of Object.entries(rows)) {
          for (const [cellId, value] of Object.entries(row)) setCell(tableId, rowId, cellId, value, false);
        }
      }
      for (const [valueId, value] of Object.entries(message.values)) setValue(valueId, value, false);
    },
    changes(message) {
      if (message.room !== selected) return;
      for (const change of message.cells) {
        if (change.length === 4) setCell(change[0], change[1], change[2], change[3], true);
        else if (change.length === 3) delCell(change[0], change[1], change[2]);
        else if (change.length === 2) delRow(change[0], change[1]);
        else delTable(change[0]);
      }
      for (const change of message.values) {
        if (change.length === 2) setValue(change[0], change[1], true);
        else delValue(change[0]);
      }
    },
    error(message) {
      showError(message.message);
    },
  };

  // -------------------------------------------------------------------------- forms

  // a form's submit sends `message(fields)` with its typed value added
  function onSubmit(formId, message) {
    $(formId).addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target.elements;
      const value = parse(form.value.value, form.kind.value);
      if (value === undefined) return showError("not a " + form.kind.value + ": " + form.value.value);
      showError("");
      send({ ...message(form), value });
    });
  }
  onSubmit("cell-form", (form) =>
    ({ type: "set_cell", table: form.table.value, row: form.row.value, cell: form.cell.value }));
  onSubmit("value-form", (form) => ({ type: "set_value", id: form.id.value }));

  connect();
})();
