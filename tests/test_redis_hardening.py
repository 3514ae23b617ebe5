"""The private Redis is hardened: ACL users, no password on a command line, a private directory, an
unprivileged uid, maxmemory with noeviction (507 from the API when full), and no password in logs.

That the whole suite passes with the restricted service user (and that the session's ACL LOG is
empty at its end, checked in conftest) is the proof that the service user may do what it must.
"""

import os
import stat

import pytest
import redis

from taskkernel import keys
from taskkernel.client import ApiError
from taskkernel.redis_server import ADMIN_USER, SERVICE_USER, UNPRIVILEGED_UID, RedisServer
from taskkernel.exceptions import ConfigurationError
from taskkernel.settings import Settings, load_settings
from tests.conftest import Service, acl_refusals, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server():
    """A Redis of this module's own: the refusals below must not reach the session's ACL LOG."""
    with RedisServer(port=free_port()) as server:
        yield server


@pytest.fixture
def service_client(server):
    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def admin(server):
    client = redis.Redis.from_url(server.admin_url)
    try:
        yield client
    finally:
        client.close()


DANGEROUS = [
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "SET", "dbfilename", "x.so"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "REWRITE"),
    ("MODULE", "LOAD", "/tmp/x.so"),
    ("DEBUG", "SLEEP", "0"),
    ("SAVE",),
    ("BGSAVE",),
    ("BGREWRITEAOF",),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("ACL", "SETUSER", "default", "on", "nopass", "+@all"),
    ("ACL", "LIST"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("MONITOR",),
    ("KEYS", "*"),
    ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
    ("SWAPDB", "0", "1"),
]


@pytest.mark.parametrize("command", DANGEROUS, ids=lambda c: " ".join(c[:2]))
def test_the_service_user_cannot_run_dangerous_commands(service_client, admin, command):
    # MODULE and DEBUG are switched off for everyone (enable-*-command no) before the ACL is asked
    refusal = "not allowed" if command[0] in ("MODULE", "DEBUG") else "no permissions"
    with pytest.raises(redis.exceptions.ResponseError, match=refusal):
        service_client.execute_command(*command)
    assert "no permissions" in admin.acl_dryrun(SERVICE_USER, *command).decode(), "the ACL refuses it too"


@pytest.mark.parametrize("command", ["'FLUSHALL'", "'KEYS', '*'", "'SWAPDB', 0, 1"])
def test_a_script_does_not_get_around_the_acl(service_client, command):
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        service_client.eval(f"return redis.call({command})", 0)


def test_the_service_user_reads_and_writes_and_subscribes(service_client):
    service_client.set("k", "v")
    assert service_client.get("k") == b"v"
    assert service_client.publish("taskkernel:feed:x", "m") == 0
    assert service_client.acl_whoami() == SERVICE_USER
    service_client.delete("k")


def test_even_the_admin_cannot_load_modules_debug_or_move_the_data_directory(admin):
    assert admin.acl_whoami() == ADMIN_USER
    assert admin.config_get("enable-*") == {"enable-protected-configs": "no", "enable-debug-command": "no",
                                            "enable-module-command": "no"}
    for command in [("MODULE", "LOAD", "/tmp/x.so"), ("DEBUG", "SLEEP", "0"), ("CONFIG", "SET", "dir", "/")]:
        with pytest.raises(redis.exceptions.ResponseError):
            admin.execute_command(*command)


def test_the_default_user_cannot_log_in(server):
    without_login = redis.Redis(host="127.0.0.1", port=server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        without_login.ping()
    for password in ("", server.password, server.admin_password):  # AUTH <password> logs in as default
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, username="default", password=password).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port, password=server.password).ping()


def test_no_password_is_on_the_command_line_in_the_environment_or_in_the_conf(server):
    pid = server.process.pid
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    environ = open(f"/proc/{pid}/environ", "rb").read()
    conf = open(server.conf_path).read()
    for secret in (server.password, server.admin_password):
        assert secret.encode() not in cmdline
        assert secret.encode() not in environ
        assert secret not in conf
    assert environ == b"", "redis-server gets no environment at all"
    assert f"user {SERVICE_USER} on #" in conf  # a SHA-256 hash, not the password


def test_the_conf_is_0600_in_a_0700_directory(server):
    assert stat.S_IMODE(os.stat(server.dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(server.conf_path).st_mode) == 0o600
    assert os.path.dirname(server.conf_path) == server.dir
    assert os.stat(server.dir).st_uid == os.stat(server.conf_path).st_uid == server.run_as_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start redis-server as another user")
def test_started_by_root_redis_server_runs_as_an_unprivileged_uid(server):
    assert server.run_as_uid == UNPRIVILEGED_UID != 0
    status = dict(line.split(":", 1) for line in open(f"/proc/{server.process.pid}/status").read().splitlines())
    assert status["Uid"].split() == [str(UNPRIVILEGED_UID)] * 4
    assert status["Gid"].split() == [str(UNPRIVILEGED_UID)] * 4
    assert status["Groups"].split() == []


def test_maxmemory_and_noeviction_are_in_effect(server, admin):
    assert admin.config_get("maxmemory") == {"maxmemory": str(server.maxmemory_bytes)}
    assert server.maxmemory_bytes == Settings.redis_maxmemory_bytes
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert admin.config_get("protected-mode") == {"protected-mode": "yes"}
    assert admin.config_get("bind") == {"bind": "127.0.0.1"}


def test_what_scripts_wrote_survives_a_restart_of_a_persistent_redis():
    """Redis 7.0 replays the append-only file as `default` and re-checks the ACL at EXEC (the form
    scripts' writes take there): `default` keeps +@all, or a restart would drop them."""
    server = RedisServer(port=free_port(), persistent=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.eval("redis.call('SET', KEYS[1], 'a'); redis.call('HSET', KEYS[2], 'f', 'b')", 2, "s", "h")
        client.close()
        server.stop(keep_data=True)
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("s") == b"a" and client.hget("h", "f") == b"b"
        client.close()
    finally:
        server.stop()


def test_the_maxmemory_setting_is_bytes_and_checked():
    assert load_settings({}).redis_maxmemory_bytes == 1024 ** 3
    assert load_settings({"TASKKERNEL_REDIS_MAXMEMORY_BYTES": "0"}).redis_maxmemory_bytes == 0  # no limit
    with pytest.raises(ConfigurationError, match="at least 1 MiB"):
        load_settings({"TASKKERNEL_REDIS_MAXMEMORY_BYTES": "512"})  # megabytes meant, bytes read


@pytest.fixture
def small_redis_service(config_dir):
    """A service on a Redis of its own whose maxmemory is 8 MiB."""
    server = RedisServer(port=free_port(), maxmemory_bytes=8 * 1024 * 1024).start()
    svc = Service(server.url, config_dir, {"TASKKERNEL_LOG_LEVEL": "WARNING"})
    try:
        yield svc, server
        assert not acl_refusals(server)
    finally:
        svc.close()
        server.stop()


def test_a_full_redis_is_a_clear_507_and_evicts_nothing(small_redis_service):
    svc, server = small_redis_service
    svc.start_supervisor(pool=2)  # one idle worker is left for the create below
    svc.start_api()
    nb = svc.client().start()
    first = nb.evaluate("x = 41\nx + 1")
    admin = redis.Redis.from_url(server.admin_url)
    fillers = 0
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            while True:  # the admin fills Redis up to the maxmemory of its redis.conf
                admin.set(f"filler:{fillers}", b"x" * 65536)
                fillers += 1
        assert fillers * 65536 < server.maxmemory_bytes
        # Full is "used > maxmemory" at each command, and clients' buffers come and go: lower the
        # limit under what is used so that the requests below meet a full Redis every time
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] - 1024 * 1024)
        records = [keys.notebook(nb.id), keys.notebook_cells(nb.id), keys.cell(first["id"]),
                   keys.feed_stream(nb.id)]
        for attempt in (lambda: nb.evaluate("x"), lambda: svc.client().start()):
            with pytest.raises(ApiError) as info:
                attempt()
            assert info.value.status == 507 and info.value.code == "redis_out_of_memory"
            assert "out of memory" in info.value.message
        assert nb.cell(first["id"])["outputs"][0]["data"]["text/plain"] == "42", "reads still work"
        assert admin.info("stats")["evicted_keys"] == 0, "nothing was evicted"
        assert all(admin.exists(key) for key in records)
        assert all(admin.exists(f"filler:{i}") for i in range(fillers))
    finally:
        admin.config_set("maxmemory", server.maxmemory_bytes)
        for i in range(fillers):
            admin.delete(f"filler:{i}")
        admin.close()
    assert nb.evaluate("x")["outputs"][0]["data"]["text/plain"] == "41", "memory freed: it works again"
    nb.close()


@pytest.mark.parametrize("log_json", [0, 1])
def test_no_password_in_the_logs_of_the_supervisor_and_the_api(redis_server, config_dir, tmp_path, log_json):
    """Both log at DEBUG through a notebook's life; neither may show the service's Redis password."""
    svc = Service(redis_server.db_url(3), config_dir,
                  {"TASKKERNEL_LOG_LEVEL": "DEBUG", "TASKKERNEL_LOG_JSON": str(log_json)})
    logs = {"supervisor": tmp_path / "supervisor.log", "api": tmp_path / "api.log"}
    try:
        svc.start_supervisor("logs", pool=1, output=logs["supervisor"])
        svc.start_api(output=logs["api"])
        with svc.client().start() as nb:
            assert nb.evaluate("print('hi')")["stdout"] == "hi\n"
        for process in (svc.api_process, svc.supervisors["logs"]):
            svc.stop_process(process)
    finally:
        svc.close()
        redis.Redis.from_url(redis_server.db_url(3, admin=True)).flushdb()
    texts = {name: path.read_text(errors="replace") for name, path in logs.items()}
    for name, text in texts.items():
        assert text, f"the {name} logged nothing: nothing was checked"
        assert redis_server.password not in text, f"the {name}'s log shows the Redis password"
    assert f"{SERVICE_USER}:***@127.0.0.1:{redis_server.port}/3" in texts["supervisor"]
