// @jupyterlab/services (JupyterLab's own client library) against taskkernel's gateway: start a
// kernel, run a cell, complete, interrupt a running cell, shut down. Prints one JSON object.
// Usage: node gateway_client.js http://127.0.0.1:PORT/
'use strict';
const { KernelManager, ServerConnection } = require('@jupyterlab/services');
const WS = require('ws');

// A browser accepts a server that picks no subprotocol (Jupyter's JSON framing); `ws` would refuse.
class BrowserLikeWebSocket extends WS {
  constructor(url) { super(url); }
}

function withTimeout(promise, ms, what) {
  return Promise.race([promise, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))]);
}

async function run(code, kernel, streams) {
  const future = kernel.requestExecute({ code });
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') streams.push(msg.content.text);
    if (msg.header.msg_type === 'execute_result') streams.push(`result:${msg.content.data['text/plain']}`);
    if (msg.header.msg_type === 'error') streams.push(`error:${msg.content.ename}`);
  };
  return (await withTimeout(future.done, 60000, code)).content;
}

async function main() {
  const baseUrl = process.argv[2];
  const serverSettings = ServerConnection.makeSettings({
    baseUrl, wsUrl: baseUrl.replace(/^http/, 'ws'), WebSocket: BrowserLikeWebSocket,
    fetch, Request, Headers, appendToken: false,
  });
  const manager = new KernelManager({ serverSettings });
  await manager.ready;
  const kernel = await manager.startNew({ name: 'python' });
  const out = { id: kernel.id, name: kernel.name };
  try {
    const info = await withTimeout(kernel.info, 30000, 'kernel_info');
    out.language = info.language_info.name;
    const streams = [];
    out.reply = await run("import math\nprint('hello from node')\n6 * 7", kernel, streams);
    out.outputs = streams.slice();
    const completion = await withTimeout(kernel.requestComplete({ code: 'math.sq', cursor_pos: 7 }),
                                         30000, 'complete');
    out.matches = completion.content.matches;
    const sleeping = [];
    const running = run("import time\nprint('napping', flush=True)\ntime.sleep(60)", kernel, sleeping);
    while (!sleeping.includes('napping\n')) await new Promise((r) => setTimeout(r, 20));
    await kernel.interrupt();
    out.interrupted = await running;
    out.interrupted_outputs = sleeping;
    out.listed = (await manager.refreshRunning(), Array.from(manager.running()).map((m) => m.id));
  } finally {
    await kernel.shutdown();
    manager.dispose();
  }
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (err) => { console.error(err && err.stack || err); process.exit(1); });
