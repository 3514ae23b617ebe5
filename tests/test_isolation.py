"""Isolation: a cell reaches nothing outside its own notebook.

Each test is an attack written as a cell, run in a real sandboxed engine behind a real worker,
and what the attack would have needed must be out of its reach.
"""

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from taskkernel import keys
from taskkernel.settings import SOURCE_CONFIG_DIR
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

TOKEN = "isolation-test-service-token-4f1c9a"


def value(cell: dict):
    """The cell's result, which the attacks return as JSON text."""
    assert cell["status"] == "ok", cell.get("error")
    return json.loads(eval(cell["outputs"][-1]["data"]["text/plain"]))  # a repr of a JSON string


def engine_pid(notebook) -> int:
    """The engine process of a notebook: worker -> bubblewrap -> the sandbox's init -> engine."""
    pid = notebook.record["worker"]["pid"]
    for _ in range(3):
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return pid


SCAN_MEMORY = """
import json, os, re
def scan(parts):
    # the secret is looked for as its two halves side by side: the cell itself only holds them apart
    first, second = (p.encode() for p in parts)
    found = []
    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith('r'):
                continue
            start, end = (int(x, 16) for x in span.split('-'))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            at = chunk.find(first)
            while at >= 0:
                if chunk[at + len(first):at + len(first) + len(second)] == second:
                    found.append(line.strip())
                    break
                at = chunk.find(first, at + 1)
    return found
"""


@pytest.fixture
def secured(private_service):
    """A service whose API needs a token, with checkpoints in a directory of the host."""
    checkpoints = private_service.config_dir.parent / "checkpoints"
    private_service.start_supervisor(pool=2, token=TOKEN, checkpoint_dir=str(checkpoints))
    private_service.start_api(token=TOKEN)
    private_service.checkpoints = checkpoints
    return private_service


def admin(service):
    from taskkernel.client import Client

    return Client(service.api_url, token=TOKEN)


def test_no_credential_is_in_the_engines_environment_command_line_or_memory(secured):
    password = secured.redis_url.split(":")[2].split("@")[0]
    assert len(password) >= 16
    secrets = {"redis password": password, "service token": TOKEN}
    with admin(secured).start() as nb:
        nb.evaluate(SCAN_MEMORY)
        for name, secret in secrets.items():
            half = len(secret) // 2
            cell = nb.evaluate(
                f"import json, os\n"
                f"parts = ({secret[:half]!r}, {secret[half:]!r})\n"
                "env = open('/proc/self/environ', 'rb').read().decode(errors='replace')\n"
                "cmd = open('/proc/self/cmdline', 'rb').read().decode(errors='replace')\n"
                "json.dumps({'memory': scan(parts), 'env': ''.join(parts) in env, 'cmd': ''.join(parts) in cmd,\n"
                "            'names': sorted(k for k in os.environ if k.startswith('TASKKERNEL'))})", timeout=60)
            found = value(cell)
            assert found == {"memory": [], "env": False, "cmd": False, "names": []}, f"the {name} leaked: {found}"


def test_a_cell_sees_only_its_own_processes_and_holds_no_privilege(notebook, client):
    with client.start() as other:
        other_worker = other.record["worker"]["pid"]
        own_worker = notebook.record["worker"]["pid"]
        cell = notebook.evaluate(
            "import json, os\n"
            "procs = {}\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n"
            "        procs[pid] = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
            "    except OSError:\n"
            "        pass\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "json.dumps({'procs': procs, 'uid': os.getuid(), 'caps': status['CapEff'].strip(),\n"
            "            'nnp': status['NoNewPrivs'].strip()})")
        seen = value(cell)
        commands = " ".join(seen["procs"].values())
        assert "redis-server" not in commands and "celery" not in commands and "taskkernel worker" not in commands
        assert len(seen["procs"]) <= 3, seen["procs"]  # bubblewrap's init, the engine, the scan's own child
        assert seen["caps"] == "0000000000000000" and seen["nnp"] == "1"
        if os.geteuid() == 0:  # a uid per worker slot
            other_uid = value(other.evaluate("import json, os\njson.dumps(os.getuid())"))
            assert seen["uid"] != 0 and other_uid != 0 and seen["uid"] != other_uid

        for target in (other_worker, own_worker, os.getpid()):
            cell = notebook.evaluate(f"import os, signal\nos.kill({target}, signal.SIGSTOP)")
            assert cell["status"] == "error" and cell["error"]["ename"] in ("ProcessLookupError", "PermissionError")
        assert other.evaluate("21 * 2")["outputs"][0]["data"]["text/plain"] == "42", "the other notebook runs on"
        assert notebook.evaluate("'still here'")["status"] == "ok"


def test_the_hosts_loopback_is_out_of_reach(service, notebook):
    redis_port = int(service.redis_url.rsplit(":", 1)[1].split("/")[0])
    api_port = int(service.api_url.rsplit(":", 1)[1])
    for port in (redis_port, api_port):
        cell = notebook.evaluate(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert cell["status"] == "error" and cell["error"]["ename"] in ("ConnectionRefusedError", "OSError",
                                                                         "TimeoutError"), cell


def test_another_notebooks_files_home_and_tmp_are_invisible(client, notebook):
    with client.start() as other:
        notebook.evaluate("import os\nopen('/tmp/mine.txt', 'w').write('a')\nopen('notes.txt', 'w').write('a')\n"
                          "os.makedirs(os.path.expanduser('~/.config'), exist_ok=True)")
        seen = value(other.evaluate(
            "import json, os\njson.dumps({'tmp': os.listdir('/tmp'), 'home': os.listdir(os.path.expanduser('~')),\n"
            "  'cwd': os.listdir('.')})"))
        assert "mine.txt" not in seen["tmp"]  # (directories of read-only mounts beneath /tmp may show)
        assert seen["home"] == [] and seen["cwd"] == []
        own = value(notebook.evaluate("import json, os\njson.dumps([sorted(os.listdir('.')), os.listdir('/tmp')])"))
        assert own[0] == [".config", "notes.txt"] and "mine.txt" in own[1]


def test_no_file_the_service_loads_can_be_written(private_service, tmp_path):
    private_service.start_supervisor(pool=1)
    private_service.start_api()
    import taskkernel

    targets = [private_service.config_dir / "engines" / "evil.toml", SOURCE_CONFIG_DIR / "engines" / "evil.toml",
               Path(taskkernel.__file__).parent / "evil.py", Path(taskkernel.__file__).parent.parent / "evil.py"]
    with private_service.client().start() as nb:
        for target in targets:
            cell = nb.evaluate(f"open({str(target)!r}, 'w').write('name = \"evil\"')")
            assert cell["status"] == "error" and cell["error"]["ename"] in (
                "FileNotFoundError", "PermissionError", "OSError"), (target, cell)
            assert not target.exists()


def test_processes_a_cell_starts_die_with_the_notebook(client):
    marker = f"313.{uuid.uuid4().int % 10**6:06d}"  # an unusual sleep of its own, to find these processes on the host
    nb = client.start()
    nb.evaluate(
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{marker}'])\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n")

    def sleepers() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(int(entry))
            except OSError:
                pass
        return found

    try:
        wait_for(lambda: len(sleepers()) == 3, 10, "the three sleeps to start")
    finally:
        nb.close()
    wait_for(lambda: not sleepers(), 15, "the sleeps to die with the notebook")


def test_rich_output_is_capped_like_streams(private_service):
    private_service.start_supervisor(pool=1, max_output_bytes=10_000)
    private_service.start_api()
    with private_service.client().start() as nb:
        cell = nb.evaluate("class Big:\n    def _repr_html_(self):\n        return '<b>' + 'x' * 200_000\n"
                           "for _ in range(5):\n    display(Big())\n'y' * 300_000")
        kept = len(json.dumps(cell["outputs"]))
        assert kept < 15_000, kept
        assert "output truncated" in cell["stderr"]
        assert nb.evaluate("print('next')")["stdout"] == "next\n", "the next cell has its own budget"


def test_checkpoints_cannot_be_listed_planted_or_read_from_a_cell(secured):
    api = admin(secured)
    with api.start() as victim, api.start() as attacker:
        victim.evaluate("secret = 'victim-data'")
        victim.checkpoint()
        stored = secured.checkpoints / victim.id
        assert stored.is_dir()
        cell = attacker.evaluate(
            f"import os, pickle\n"
            f"os.makedirs({str(stored)!r}, exist_ok=True)\n"
            f"open(os.path.join({str(stored)!r}, '0.bin'), 'wb').write(b'P' + pickle.dumps('planted'))")
        assert cell["status"] == "ok", "the write lands in the attacker's own sandbox, nowhere else"
        listing = value(attacker.evaluate(f"import json, os\njson.dumps(os.listdir({str(stored)!r}))"))
        assert listing == ["0.bin"], "it sees only what it wrote itself"
        assert value(attacker.evaluate(f"import json, os\njson.dumps(os.path.exists({str(stored / 'meta.json')!r}))")) \
            is False
        victim.evaluate("del secret")
        victim.restore()
        assert victim.evaluate("secret")["outputs"][0]["data"]["text/plain"] == "'victim-data'"


def test_a_worker_never_hands_its_engine_the_service_settings(secured):
    """The worker's record of its engine: another pid, another uid (as root), an empty environment."""
    api = admin(secured)
    with api.start() as nb:
        worker_pid = nb.record["worker"]["pid"]
        children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
        assert children, "the engine (under bubblewrap) is the worker's child"
        engines = []
        pending = [int(c) for c in children]
        while pending:
            pid = pending.pop()
            engines.append(pid)
            pending += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for pid in engines:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert "TASKKERNEL_" not in environ and TOKEN not in environ
        uids = {int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) for pid in engines}
        if os.geteuid() == 0:
            assert any(uid >= 200_000 for uid in uids), uids


def test_a_sigkilled_engine_answers_the_waiting_caller_at_once(notebook):
    notebook.evaluate("x = 1")
    cell = notebook.evaluate("import time; time.sleep(30)", wait=False)
    wait_for(lambda: notebook.cell(cell["id"])["state"] == "running", 10, "the cell to start")
    started = time.monotonic()
    os.kill(engine_pid(notebook), signal.SIGKILL)
    done = notebook.wait(cell["id"], timeout=10)
    assert time.monotonic() - started < 5
    assert done["error"]["ename"] == "EngineDied" and "SIGKILL" in done["error"]["evalue"]
    wait_for(lambda: notebook.refresh()["worker"] and notebook.record["restarts"] == 1, 15, "a fresh worker")
    assert notebook.evaluate("'x' in globals()")["outputs"][0]["data"]["text/plain"] == "False"


def test_without_bubblewrap_the_supervisor_refuses_to_start(private_service, tmp_path):
    import subprocess
    import sys

    env = {**private_service._env(), "PATH": str(tmp_path)}  # no bwrap on this PATH
    result = subprocess.run([sys.executable, "-m", "taskkernel", "worker", "--pool", "1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "bubblewrap" in result.stderr and "TASKKERNEL_SANDBOX=none" in result.stderr
    assert not private_service.redis.smembers(keys.HOSTS), "no host announced itself"


def test_running_unsandboxed_is_an_explicit_choice(private_service):
    private_service.start_supervisor(pool=1, sandbox="none")
    private_service.start_api()
    with private_service.client().start() as nb:
        # no pid namespace: the engine sees the host's processes, the test's own among them
        cell = nb.evaluate(f"import os\nos.path.exists('/proc/{os.getpid()}')")
        assert cell["outputs"][0]["data"]["text/plain"] == "True"



@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups per notebook need root")
def test_a_notebooks_processes_share_one_memory_and_pids_cgroup(private_service):
    (private_service.config_dir / "engines" / "capped.toml").write_text(
        'name = "capped"\nclass = "taskkernel.engines.python:PythonEngine"\n'
        '[limits]\nnotebook_memory_bytes = 300_000_000\nnotebook_processes = 64\n')
    host = private_service.start_supervisor(pool=1, wait=False)
    private_service.start_api()
    private_service.wait_idle(host, "capped", 1)
    with private_service.client().start("capped") as nb:
        worker_id = nb.record["worker"]["id"]
        groups = Path(f"/proc/{engine_pid(nb)}/cgroup").read_text()
        assert "memory:" in groups and f"taskkernel-{worker_id}" in groups
        # hierarchy:controller:path lines -> the notebook's own directories (not a walk of the whole tree,
        # where other services' cgroups come and go)
        own = [Path("/sys/fs/cgroup", line.split(":")[1], line.split(":", 2)[2].lstrip("/"))
               for line in groups.splitlines() if line.split(":")[1] in ("memory", "pids")]
        assert len(own) == 2 and all(p.is_dir() for p in own), own
        forks = nb.evaluate("import subprocess\nprocs = []\ntry:\n    for _ in range(200):\n"
                            "        procs.append(subprocess.Popen(['sleep', '30']))\nexcept OSError as exc:\n"
                            "    print(type(exc).__name__)\nlen(procs)", timeout=60)
        assert int(forks["outputs"][-1]["data"]["text/plain"]) < 64 and forks["stdout"].strip() == "BlockingIOError"
        nb.evaluate("for p in procs:\n    p.kill()\n    p.wait()")
        # 400 MB touched in a child process: the notebook's cgroup, not a per-process limit, stops it
        cell = nb.evaluate("import subprocess, sys\n"
                           "subprocess.run([sys.executable, '-c', 'b = bytearray(400_000_000)']).returncode",
                           timeout=60)
        assert cell["outputs"][-1]["data"]["text/plain"] == "-9", "the child was OOM-killed"
        assert nb.evaluate("'alive'")["status"] == "ok"
    wait_for(lambda: not any(p.exists() for p in own), 10, "the cgroups to be removed with the worker")


@pytest.fixture
def outside_server():
    """A TCP server in a network namespace of the test's own, reached from the host through a veth
    pair: an address that is neither the host's loopback nor anything outside this machine."""
    import shutil
    import subprocess
    import sys
    import uuid

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = "tk" + uuid.uuid4().hex[:6]
    octet = 16 + int(name[2:4], 16) % 200
    host_ip, server_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    commands = [["ip", "netns", "add", name],
                ["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"],
                ["ip", "link", "set", f"{name}b", "netns", name],
                ["ip", "addr", "add", f"{host_ip}/30", "dev", f"{name}a"], ["ip", "link", "set", f"{name}a", "up"],
                ["ip", "netns", "exec", name, "ip", "addr", "add", f"{server_ip}/30", "dev", f"{name}b"],
                ["ip", "netns", "exec", name, "ip", "link", "set", f"{name}b", "up"]]
    server = None
    try:
        for command in commands:
            subprocess.run(command, check=True, timeout=10, capture_output=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c",
             "import socket\ns = socket.socket()\ns.bind((%r, 8089))\ns.listen()\nwhile True:\n"
             "    c, _ = s.accept()\n    c.sendall(b'hello from outside')\n    c.close()" % server_ip])
        wait_for(lambda: subprocess.run(["ip", "netns", "exec", name, "ss", "-ltn"], capture_output=True,
                                        text=True, timeout=10).stdout.count(":8089") > 0, 10, "the server")
        yield server_ip, 8089
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "link", "del", f"{name}a"], timeout=10, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True)


def test_outbound_engines_reach_the_world_but_not_the_hosts_loopback(private_service, outside_server):
    (private_service.config_dir / "engines" / "online.toml").write_text(
        'name = "online"\nclass = "taskkernel.engines.python:PythonEngine"\nnetwork = "outbound"\n')
    host = private_service.start_supervisor(pool=1, wait=False)
    private_service.start_api()
    private_service.wait_idle(host, "online", 1)
    address, port = outside_server
    redis_port = int(private_service.redis_url.rsplit(":", 1)[1].split("/")[0])
    with private_service.client().start("online") as nb:
        cell = nb.evaluate(f"import socket\nsocket.create_connection(({address!r}, {port}), timeout=5).recv(100)")
        assert cell["outputs"][-1]["data"]["text/plain"] == "b'hello from outside'"
        for target in ("127.0.0.1", "10.0.2.2"):  # the sandbox's own loopback; slirp's gateway to the host's
            cell = nb.evaluate(f"import socket\nsocket.create_connection(({target!r}, {redis_port}), timeout=3)")
            assert cell["status"] == "error" and cell["error"]["ename"] in (
                "ConnectionRefusedError", "OSError", "TimeoutError"), cell
        assert value(nb.evaluate("import json\njson.dumps(open('/etc/resolv.conf').read())")) == \
            "nameserver 10.0.2.3\n"
