"""The kernels REST resource as Jupyter Server's GatewayKernelManager reads it: a kernel is a notebook.

    GET /api/kernels                 [kernel model, ...]            (every notebook)
    POST /api/kernels {name, env}    201 + the model                (a notebook of engine `name`)
    GET /api/kernels/<id>            the model
    DELETE /api/kernels/<id>         204                            (the notebook is deleted)
    POST /api/kernels/<id>/restart   200 + the model                (a fresh worker, the same id)
    POST /api/kernels/<id>/interrupt 204

A kernel id is the dashed UUID form of the notebook id, so a kernel and its notebook are the same
thing under two spellings (`GET /api/notebooks/<hex>` on the HTTP API shows it too).
"""

from __future__ import annotations

import datetime as dt
import time

from taskkernel import __version__, keys, rpc, workspace
from taskkernel.assignment import RESTARTED_ERROR
from taskkernel.engines import registry
from taskkernel.exceptions import InvalidField, NotebookNotFound
from taskkernel.gateway.app import BaseHandler, Gateway, kernel_id_of, notebook_id_of
from taskkernel.gateway.kernelspecs import default_name
from taskkernel.messages import as_text
from taskkernel.notebooks import notebook_from_redis

# notebook record state -> Jupyter's execution_state
EXECUTION_STATES = {"busy": "busy", "restarting": "restarting", "deleting": "dead"}
# the kernel name Jupyter Server asks for before it has read the gateway's default (and most saved
# notebooks name): it gets the default engine
JUPYTER_DEFAULT_NAME = "python3"
# Jupyter Server parses last_activity with exactly this format (GatewayKernelManager.refresh_model)
LAST_ACTIVITY_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def kernel_model(notebook: dict, connections: int) -> dict:
    """A notebook as a Jupyter kernel model: {id, name, last_activity, execution_state, connections}."""
    last = notebook.get("last_activity") or notebook.get("created")
    moment = dt.datetime.fromisoformat(last) if last else dt.datetime.now(dt.timezone.utc)
    return {
        "id": kernel_id_of(notebook["id"]),
        "name": notebook["engine"],
        "last_activity": moment.astimezone(dt.timezone.utc).strftime(LAST_ACTIVITY_FORMAT),
        "execution_state": EXECUTION_STATES.get(notebook["state"], "idle"),
        "connections": connections,
    }


async def connection_counts(gateway: Gateway) -> dict[str, int]:
    """Open websockets per notebook id, summed over every live gateway process."""
    live = await gateway.aredis.zrangebyscore(keys.GATEWAYS, time.time(), "+inf")
    pipe = gateway.aredis.pipeline(transaction=False)
    for gateway_id in live:
        pipe.hgetall(keys.gateway_connections(as_text(gateway_id)))
    counts: dict[str, int] = {}
    for held in await pipe.execute() if live else []:
        for notebook_id, n in held.items():
            counts[as_text(notebook_id)] = counts.get(as_text(notebook_id), 0) + int(n)
    return counts


async def get_notebook(gateway: Gateway, notebook_id: str) -> dict:
    """The notebook record, read on the event loop; NotebookNotFound if there is none."""
    raw = await gateway.aredis.hgetall(keys.notebook(notebook_id))
    if not raw or b"engine" not in raw:
        raise NotebookNotFound(notebook_id)
    return notebook_from_redis(raw)


async def model_of(gateway: Gateway, notebook_id: str) -> dict:
    notebook = await get_notebook(gateway, notebook_id)
    return kernel_model(notebook, (await connection_counts(gateway)).get(notebook_id, 0))


class InfoHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"version": __version__, "gateway": "taskkernel"})


class KernelsHandler(BaseHandler):
    async def get(self) -> None:
        notebooks = await self.gateway.run(self.gateway.store.list)
        counts = await connection_counts(self.gateway)
        self.send_json([kernel_model(nb, counts.get(nb["id"], 0)) for nb in notebooks])

    async def post(self) -> None:
        """Start a kernel: pin a notebook of engine `name` (the default engine without one).

        `env` is what Jupyter Server sends: its KERNEL_* variables become the notebook's environment
        and a relative KERNEL_WORKING_DIR its working directory (workspace.from_jupyter); the rest
        of it is Jupyter's own and left out.
        """
        body = self.json_body()
        settings = self.gateway.settings
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidField("field 'name' must be a string", field="name")
        if not isinstance(body.get("env", {}), dict):
            raise InvalidField("field 'env' must be an object", field="env")
        if not name or name == JUPYTER_DEFAULT_NAME:
            name = default_name(registry.load_specs(settings.config_dir)[0])
        spec = registry.get_spec(settings.config_dir, name)  # UnknownEngine -> 400
        asked = workspace.from_jupyter(body.get("env") or {}, lambda variable: variable.startswith("KERNEL_"))
        cwd = workspace.check_cwd(asked.get("cwd", spec.get("cwd", "")))
        env = workspace.check_env(asked.get("env", {}))
        notebook = await self.gateway.run(self.gateway.store.create, name, timeout_s=settings.assign_timeout_s,
                                          max_total=settings.max_notebooks,
                                          max_of_engine=int(spec.get("max_notebooks", 0)),
                                          workspace_json=workspace.encode(cwd, env) if cwd or env else "")
        self.set_header("Location", f"/api/kernels/{kernel_id_of(notebook['id'])}")
        self.send_json(kernel_model(notebook, 0), status=201)


class KernelHandler(BaseHandler):
    async def get(self, kernel_id: str) -> None:
        self.send_json(await model_of(self.gateway, notebook_id_of(kernel_id)))

    async def delete(self, kernel_id: str) -> None:
        await self.gateway.run(self.gateway.store.delete, notebook_id_of(kernel_id),
                               reason="the kernel was shut down")
        self.set_status(204)
        self.finish()


async def restart(gateway: Gateway, notebook_id: str) -> dict:
    """A fresh namespace on a fresh worker (the running cell fails, queued ones abort); the record."""
    store, settings = gateway.store, gateway.settings
    await get_notebook(gateway, notebook_id)
    await gateway.run(store.restart, notebook_id, reason="the kernel was restarted", cell_error=RESTARTED_ERROR)
    return await gateway.run(store.wait_for_worker, notebook_id, settings.assign_timeout_s)


async def interrupt(gateway: Gateway, notebook_id: str) -> None:
    """KeyboardInterrupt in the running cell; nothing when none runs or the notebook has no worker."""
    notebook = await get_notebook(gateway, notebook_id)
    if notebook["worker"]:
        await gateway.run(rpc.call, gateway.redis, notebook["worker"]["id"], "interrupt",
                          timeout_s=gateway.settings.rpc_timeout_s)


class RestartHandler(BaseHandler):
    async def post(self, kernel_id: str) -> None:
        notebook_id = notebook_id_of(kernel_id)
        await restart(self.gateway, notebook_id)
        self.send_json(await model_of(self.gateway, notebook_id))


class InterruptHandler(BaseHandler):
    async def post(self, kernel_id: str) -> None:
        await interrupt(self.gateway, notebook_id_of(kernel_id))
        self.set_status(204)
        self.finish()
