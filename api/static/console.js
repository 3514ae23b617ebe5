// taskkernel web console: pick or create a notebook, run cells, watch the feed (Server-Sent Events).
// Everything it shows comes from the notebook's feed, replayed from the start when a notebook is
// picked, so reopening the page shows the same cells in the same order as any other watcher sees.
"use strict";

const $ = (id) => document.getElementById(id);
const ANSI = /\x1b\[[0-9;?]*[ -\/]*[@-~]/g;

const ui = {
  notebook: null,       // the notebook record shown
  source: null,         // its EventSource
  cells: new Map(),     // cell id -> {root, prompt, input, outputs}
  completions: [],      // the open completion list: {matches, start, end}
  selected: 0,
  unfinished: new Set(), // cells sent from this page whose execute_reply has not come yet
};

// A cell's busy status and execute_input may reach the feed only with its first output, so while
// cells sent from here are unfinished the notebook record is polled to show that one is running.
const POLL_MS = 500;

// --- the API -------------------------------------------------------------------------------

// With TASKKERNEL_TOKEN set, open the page as /#token=<token> (the service token or a notebook's
// own token): the fragment never leaves the browser; the token is kept for this tab only, in
// sessionStorage, which only scripts of this origin can read: none of an output's (see renderBundle).
function token() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("taskkernel-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("taskkernel-token") || "";
}

async function api(path, { method = "GET", body } = {}, retried = false) {
  const options = { method, headers: { Accept: "application/json" } };
  if (token()) options.headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/api" + path, options);
  if (response.status === 401 && !retried) {
    const given = window.prompt("This taskkernel needs a token:");
    if (given) {
      sessionStorage.setItem("taskkernel-token", given.trim());
      return api(path, { method, body }, true);
    }
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((data && data.message) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

async function guarded(action) {
  try {
    showMessage("");
    return await action();
  } catch (err) {
    showMessage(err.message);
  }
}

// --- notebooks -------------------------------------------------------------------------------

async function loadEngines() {
  const { engines } = await api("/engines");
  const select = $("engine-select");
  select.replaceChildren(...engines.map((e) => new Option(e.name, e.name)));
  if (engines.some((e) => e.name === "python")) select.value = "python";
}

async function loadNotebooks() {
  const { notebooks } = await api("/notebooks");
  const select = $("notebook-select");
  const current = ui.notebook && ui.notebook.id;
  select.replaceChildren(new Option("(none)", ""), ...notebooks.map((nb) =>
    new Option(`${nb.id.slice(0, 8)}  ${nb.engine}  ${nb.state}`, nb.id)));
  select.value = notebooks.some((nb) => nb.id === current) ? current : "";
  return notebooks;
}

async function createNotebook() {
  const nb = await api("/notebooks", { method: "POST", body: { engine: $("engine-select").value || "python" } });
  await openNotebook(nb.id);
  await loadNotebooks();
}

async function openNotebook(id) {
  if (ui.source) ui.source.close();
  ui.source = null;
  ui.cells.clear();
  ui.unfinished.clear();
  $("cells").replaceChildren();
  ui.notebook = null;
  files.path = "";
  $("files").hidden = !id;
  if (!id) {
    setState("none", "no notebook");
    enableControls(false);
    history.replaceState(null, "", location.pathname);
    return;
  }
  const nb = await api(`/notebooks/${id}`);
  ui.notebook = nb;
  history.replaceState(null, "", "#" + nb.id);
  $("notebook-select").value = nb.id;
  setState(nb.state);
  setPrompt(nb.execution_count + 1);
  showInfo(nb);
  enableControls(true);
  follow(nb.id);
  guarded(loadFiles);
  $("code").focus();
}

function follow(id) {
  // EventSource resumes by itself after a dropped connection, sending Last-Event-ID.
  // EventSource cannot send an Authorization header: the feed takes the token as ?token=
  const auth = token() ? `&token=${encodeURIComponent(token())}` : "";
  const source = new EventSource(`/api/notebooks/${id}/feed?after=0-0${auth}`);
  ui.source = source;
  source.addEventListener("message", (event) => {
    if (ui.source === source) onMessage(JSON.parse(event.data));
  });
  source.addEventListener("end", () => {
    source.close();
    if (ui.source === source) {
      setState("dead", "deleted");
      enableControls(false);
    }
  });
}

function showInfo(nb) {
  const worker = nb.worker ? `worker ${nb.worker.host}:${nb.worker.pid}` : "no worker";
  $("info").textContent = `${nb.engine} · ${worker}`;
}

function setState(state, label) {
  const badge = $("state");
  badge.className = `state state-${state}`;
  badge.textContent = label || state;
  badge.dataset.state = state;
}

function setPrompt(count) {
  $("prompt").textContent = `In [${count}]:`;
}

function enableControls(on) {
  for (const id of ["interrupt", "restart", "delete", "run", "code"]) $(id).disabled = !on;
}

// --- the feed --------------------------------------------------------------------------------

function onMessage(msg) {
  const type = msg.header.msg_type;
  const content = msg.content;
  const cellId = msg.parent_header && msg.parent_header.msg_id;
  if (type === "status") {
    setState(content.execution_state);
    if (content.execution_state === "restarting") setPrompt(1);
    if (content.execution_state === "idle" && !cellId) refreshInfo();
    return;
  }
  if (!cellId) return;
  // output of a widget callback belongs to its comm message: this console draws no widgets
  if (msg.parent_header.msg_type && msg.parent_header.msg_type !== "execute_request") return;
  const view = cellView(cellId);
  const stick = nearBottom();
  switch (type) {
    case "execute_input":
      view.input.textContent = content.code;
      view.prompt.textContent = `In [${content.execution_count}]:`;
      view.root.className = "cell running";
      break;
    case "stream":
      appendStream(view, content.name, content.text);
      break;
    case "execute_result":
      appendBundle(view, content.data, `Out[${content.execution_count}]:`);
      break;
    case "display_data":
      appendBundle(view, content.data);
      break;
    case "error":
      appendError(view, content);
      break;
    case "execute_reply":
      ui.unfinished.delete(cellId);
      view.root.className = `cell ${content.status}`;
      view.root.dataset.status = content.status;
      if (content.status === "aborted") {
        view.prompt.textContent = "In [-]:";
        appendNote(view, `aborted: ${content.reason || "not run"}`);
      }
      if (content.execution_count) setPrompt(content.execution_count + 1);
      guarded(loadFiles);  // the cell may have written files
      break;
  }
  if (stick) scrollToBottom();
}

async function refreshInfo() {
  if (!ui.notebook) return;
  try {
    ui.notebook = await api(`/notebooks/${ui.notebook.id}`);
    showInfo(ui.notebook);
  } catch (err) { /* deleted meanwhile: the feed's end event says so */ }
}

function cellView(cellId) {
  let view = ui.cells.get(cellId);
  if (view) return view;
  const root = document.createElement("div");
  root.className = "cell queued";
  root.dataset.cell = cellId;
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = "In [*]:";
  const input = document.createElement("pre");
  input.className = "input";
  const outputs = document.createElement("div");
  outputs.className = "outputs";
  root.append(prompt, input, outputs);
  $("cells").append(root);
  view = { root, prompt, input, outputs };
  ui.cells.set(cellId, view);
  return view;
}

function outputBox(view, className) {
  const box = document.createElement("div");
  box.className = `output ${className}`;
  view.outputs.append(box);
  return box;
}

function appendStream(view, name, text) {
  const last = view.outputs.lastElementChild;
  if (last && last.dataset.stream === name) {
    last.firstChild.textContent += text.replace(ANSI, "");
    return;
  }
  const box = outputBox(view, `stream stream-${name}`);
  box.dataset.stream = name;
  const pre = document.createElement("pre");
  pre.textContent = text.replace(ANSI, "");
  box.append(pre);
}

function appendBundle(view, data, promptText) {
  const box = outputBox(view, promptText ? "result" : "display");
  if (promptText) box.title = promptText;
  box.append(renderBundle(data));
}

// Outputs are written by the notebook's code, which is untrusted, and this page holds the token
// (sessionStorage, readable by any script of this origin). So no output runs a script here:
// HTML goes into a sandboxed frame without allow-scripts and without allow-same-origin, whose
// opaque origin could not read this page's storage or DOM even if a script ran in it (and the
// page's Content-Security-Policy, which srcdoc frames inherit, runs none); SVG is shown as an
// image, where scripts never run; JavaScript is shown as its source.
function renderBundle(data) {
  if (data["text/html"] !== undefined) return htmlFrame(String(data["text/html"]));
  for (const mime of ["image/png", "image/jpeg"]) {
    if (data[mime] !== undefined) {
      return image(`data:${mime};base64,${String(data[mime]).replace(/\s/g, "")}`, data["text/plain"] || mime);
    }
  }
  if (data["image/svg+xml"] !== undefined) {
    return image(`data:image/svg+xml;charset=utf-8,${encodeURIComponent(data["image/svg+xml"])}`,
      data["text/plain"] || "image/svg+xml");
  }
  const pre = document.createElement("pre");
  if (data["application/javascript"] !== undefined) {
    pre.className = "javascript";
    pre.title = "application/javascript, shown and not run";
    pre.textContent = data["application/javascript"];
  } else if (data["text/plain"] !== undefined) pre.textContent = data["text/plain"].replace(ANSI, "");
  else if (data["application/json"] !== undefined) pre.textContent = JSON.stringify(data["application/json"], null, 2);
  else pre.textContent = `[${Object.keys(data).join(", ")}]`;
  return pre;
}

function image(src, alt) {
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  return img;
}

const FRAME_HEAD = '<!doctype html><meta charset="utf-8"><link rel="stylesheet" href="/console/static/output.css">';

function htmlFrame(html) {
  const frame = document.createElement("iframe");
  frame.className = "html";
  frame.setAttribute("sandbox", "");  // nothing allowed: no scripts, no same origin, no forms, no popups
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.title = "HTML output";
  frame.height = String(frameHeight(html));
  frame.srcdoc = FRAME_HEAD + html;
  return frame;
}

// The frame's opaque origin keeps its document out of this page's reach, so its height cannot be
// measured: guess it from the markup, parsed inertly (no script runs, nothing loads); the frame
// can be resized by hand, and scrolls.
function frameHeight(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  const lines = doc.querySelectorAll("tr, br, p, li, h1, h2, h3, h4, h5, h6, div, dt, dd, caption").length
    + [...doc.querySelectorAll("pre")].reduce((n, pre) => n + pre.textContent.split("\n").length, 0);
  const images = doc.querySelectorAll("img, svg, video, canvas").length;
  return Math.min(600, Math.max(32, 12 + 22 * Math.max(1, lines) + 160 * images));
}

function appendError(view, content) {
  const box = outputBox(view, "error");
  const pre = document.createElement("pre");
  const lines = (content.traceback && content.traceback.length)
    ? content.traceback : [`${content.ename}: ${content.evalue}`];
  pre.textContent = lines.join("\n").replace(ANSI, "");
  box.append(pre);
}

function appendNote(view, text) {
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = text;
  view.outputs.append(note);
}

function nearBottom() {
  const main = $("cells");
  return main.scrollHeight - main.scrollTop - main.clientHeight < 80;
}

function scrollToBottom() {
  const main = $("cells");
  main.scrollTop = main.scrollHeight;
}

// --- running, interrupting, restarting ---------------------------------------------------------

async function runCell() {
  const textarea = $("code");
  const code = textarea.value;
  if (!ui.notebook || !code.trim()) return;
  hideCompletions();
  const cell = await api(`/notebooks/${ui.notebook.id}/evaluate`, { method: "POST", body: { code } });
  const view = cellView(cell.id);
  if (!view.input.textContent) view.input.textContent = code;
  if (!view.root.dataset.status) ui.unfinished.add(cell.id);
  textarea.value = "";
  autosize();
  scrollToBottom();
}

async function interrupt() {
  if (ui.notebook) await api(`/notebooks/${ui.notebook.id}/interrupt`, { method: "POST", body: {} });
}

async function restart() {
  if (!ui.notebook) return;
  ui.unfinished.clear();
  setState("restarting");
  ui.notebook = await api(`/notebooks/${ui.notebook.id}/restart`, { method: "POST", body: {} });
  showInfo(ui.notebook);
  setPrompt(1);
}

async function deleteNotebook() {
  if (!ui.notebook) return;
  await api(`/notebooks/${ui.notebook.id}`, { method: "DELETE" });
  await openNotebook("");
  await loadNotebooks();
}

// --- files in the notebook's directory ------------------------------------------------------

const files = { path: "" };  // the directory shown: "" (the notebook's own) or "dir/sub/"

function filesUrl(path) {
  return `/notebooks/${ui.notebook.id}/files/` + path.split("/").map(encodeURIComponent).join("/");
}

async function loadFiles() {
  if (!ui.notebook) return;
  const id = ui.notebook.id;
  const listing = await api(filesUrl(files.path));
  if (!ui.notebook || ui.notebook.id !== id) return;
  $("files-path").textContent = "~/" + files.path;
  $("files-up").disabled = !files.path;
  $("file-list").replaceChildren(...listing.entries.map(fileItem));
}

function fileItem(entry) {
  const item = document.createElement("li");
  item.dataset.name = entry.name;
  item.dataset.type = entry.type;
  if (entry.type === "directory") {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "dir";
    open.textContent = entry.name + "/";
    open.addEventListener("click", () => { files.path += entry.name + "/"; guarded(loadFiles); });
    item.append(open);
  } else if (entry.type === "file") {
    const link = document.createElement("a");
    link.href = "/api" + filesUrl(files.path + entry.name);
    link.download = entry.name;
    link.textContent = entry.name;
    link.addEventListener("click", (event) => {
      if (!token()) return;  // a plain link streams the file; with a token, fetch it with the header
      event.preventDefault();
      guarded(() => downloadWithToken(link.href, entry.name));
    });
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = sizeText(entry.size);
    item.append(link, size);
  } else {
    item.className = "other";
    item.textContent = `${entry.name} (${entry.type})`;  // symlinks, FIFOs: listed, never served
  }
  return item;
}

function sizeText(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

async function downloadWithToken(href, name) {
  const response = await fetch(href, { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new Error(`download of ${name} failed: ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function uploadFiles(list) {
  if (!ui.notebook) return;
  for (const file of list) {
    const headers = { "Content-Type": "application/octet-stream", Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    // the File is streamed by the browser, not read into this page first
    const response = await fetch("/api" + filesUrl(files.path + file.name), { method: "PUT", headers, body: file });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error(`upload of ${file.name}: ${(data && data.message) || response.status}`);
    }
  }
  await loadFiles();
}

function watchDrops() {
  const zone = $("drop-zone");
  const dragging = (on) => zone.classList.toggle("dragging", on);
  document.addEventListener("dragover", (event) => {
    if (!ui.notebook || !event.dataTransfer || !event.dataTransfer.types.includes("Files")) return;
    event.preventDefault();
    dragging(true);
  });
  document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) dragging(false); });
  document.addEventListener("drop", (event) => {
    if (!ui.notebook || !event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    dragging(false);
    guarded(() => uploadFiles(event.dataTransfer.files));
  });
  $("file-input").addEventListener("change", (event) => {
    guarded(() => uploadFiles(event.target.files)).then(() => { event.target.value = ""; });
  });
  $("files-up").addEventListener("click", () => {
    files.path = files.path.replace(/[^/]+\/$/, "");
    guarded(loadFiles);
  });
}

// --- completion ------------------------------------------------------------------------------

// The API counts characters as Python does (code points); the textarea counts UTF-16 units.
const toPython = (text, offset) => [...text.slice(0, offset)].length;
const fromPython = (text, index) => [...text].slice(0, index).join("").length;

async function complete() {
  const textarea = $("code");
  const code = textarea.value;
  const cursor = textarea.selectionStart;
  const lineStart = code.lastIndexOf("\n", cursor - 1) + 1;
  if (/^\s*$/.test(code.slice(lineStart, cursor))) {  // at an indentation: Tab indents
    insertText(textarea, cursor, textarea.selectionEnd, "    ");
    return;
  }
  const reply = await api(`/notebooks/${ui.notebook.id}/complete`, {
    method: "POST", body: { code, cursor_pos: toPython(code, cursor) },
  });
  if (textarea.value !== code) return;  // typed on meanwhile
  const matches = reply.matches || [];
  const start = fromPython(code, reply.cursor_start);
  const end = fromPython(code, reply.cursor_end);
  if (matches.length === 0) return;
  if (matches.length === 1) {
    insertText(textarea, start, end, matches[0]);
    return;
  }
  const prefix = commonPrefix(matches);
  if (prefix.length > end - start) insertText(textarea, start, end, prefix);
  openCompletions(matches, start, start + Math.max(prefix.length, end - start));
}

function commonPrefix(words) {
  let prefix = words[0];
  for (const word of words) {
    while (!word.startsWith(prefix)) prefix = prefix.slice(0, -1);
  }
  return prefix;
}

function insertText(textarea, start, end, text) {
  textarea.setRangeText(text, start, end, "end");
  autosize();
}

function openCompletions(matches, start, end) {
  ui.completions = { matches, start, end };
  ui.selected = 0;
  const list = $("completions");
  list.replaceChildren(...matches.slice(0, 200).map((match, i) => {
    const item = document.createElement("li");
    item.textContent = match;
    item.addEventListener("mousedown", (event) => {
      event.preventDefault();
      pickCompletion(i);
    });
    return item;
  }));
  list.hidden = false;
  highlight();
}

function highlight() {
  const items = $("completions").children;
  for (let i = 0; i < items.length; i++) items[i].classList.toggle("selected", i === ui.selected);
  if (items[ui.selected]) items[ui.selected].scrollIntoView({ block: "nearest" });
}

function pickCompletion(i) {
  const { matches, start, end } = ui.completions;
  insertText($("code"), start, end, matches[i]);
  hideCompletions();
  $("code").focus();
}

function hideCompletions() {
  $("completions").hidden = true;
  ui.completions = [];
}

function autosize() {
  const textarea = $("code");
  textarea.rows = Math.min(20, Math.max(3, textarea.value.split("\n").length));
}

// --- keys and buttons ------------------------------------------------------------------------

function onKey(event) {
  const listOpen = !$("completions").hidden;
  if (listOpen) {
    const count = $("completions").children.length;
    if (event.key === "ArrowDown" || (event.key === "Tab" && !event.shiftKey)) {
      ui.selected = (ui.selected + 1) % count;
      highlight();
      event.preventDefault();
      return;
    }
    if (event.key === "ArrowUp" || (event.key === "Tab" && event.shiftKey)) {
      ui.selected = (ui.selected - 1 + count) % count;
      highlight();
      event.preventDefault();
      return;
    }
    if (event.key === "Enter" && !event.shiftKey) {
      pickCompletion(ui.selected);
      event.preventDefault();
      return;
    }
    if (event.key === "Escape") {
      hideCompletions();
      event.preventDefault();
      return;
    }
    hideCompletions();
  }
  if (event.key === "Enter" && (event.shiftKey || event.ctrlKey)) {
    event.preventDefault();
    guarded(runCell);
  } else if (event.key === "Tab" && !event.shiftKey) {
    event.preventDefault();
    guarded(complete);
  } else if (event.key === "Enter" && !event.altKey && !event.metaKey) {
    event.preventDefault();
    newlineWithIndent(event.target);
  }
}

function newlineWithIndent(textarea) {
  // Keep the line's indentation, one level more after a ':' (as JupyterLab's editor does).
  const cursor = textarea.selectionStart;
  const line = textarea.value.slice(textarea.value.lastIndexOf("\n", cursor - 1) + 1, cursor);
  let indent = line.match(/^[ \t]*/)[0];
  if (/:\s*$/.test(line)) indent += "    ";
  insertText(textarea, cursor, textarea.selectionEnd, "\n" + indent);
}

async function pollState() {
  if (!ui.notebook || ui.unfinished.size === 0) return;
  const id = ui.notebook.id;
  try {
    const nb = await api(`/notebooks/${id}`);
    if (ui.notebook && ui.notebook.id === id && ui.unfinished.size && nb.state === "busy") setState("busy");
  } catch (err) { /* deleted meanwhile: the feed's end event says so */ }
}

async function start() {
  setInterval(pollState, POLL_MS);
  $("code").addEventListener("keydown", onKey);
  $("code").addEventListener("input", autosize);
  $("code").addEventListener("blur", () => setTimeout(hideCompletions, 150));
  $("run").addEventListener("click", () => guarded(runCell));
  $("interrupt").addEventListener("click", () => guarded(interrupt));
  $("restart").addEventListener("click", () => guarded(restart));
  $("delete").addEventListener("click", () => guarded(deleteNotebook));
  $("new-notebook").addEventListener("click", () => guarded(createNotebook));
  $("notebook-select").addEventListener("change", (e) => guarded(() => openNotebook(e.target.value)));
  $("notebook-select").addEventListener("focus", () => guarded(loadNotebooks));
  watchDrops();
  await guarded(loadEngines);
  const notebooks = (await guarded(loadNotebooks)) || [];
  const wanted = location.hash.slice(1);
  if (wanted && notebooks.some((nb) => nb.id === wanted)) await guarded(() => openNotebook(wanted));
  document.body.dataset.ready = "1";
}

start();
