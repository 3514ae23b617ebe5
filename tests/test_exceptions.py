"""The one exception hierarchy: every error taskkernel raises on purpose has TaskkernelError as its
root, and a worker's error code becomes the API's exception with its own status."""

import pytest
import redis

from taskkernel import keys, rpc
from taskkernel.client import ApiError
from taskkernel.engines.namespace import NamespaceError
from taskkernel.exceptions import WORKER_ERRORS, EngineRefused, EngineUnavailable, TaskkernelError
from taskkernel.messages import new_id

pytestmark = pytest.mark.timeout(10)


def test_the_client_and_engine_errors_are_under_the_root():
    assert issubclass(ApiError, TaskkernelError) and issubclass(NamespaceError, TaskkernelError)
    error = NamespaceError("not_supported", "this engine has no Python namespace")
    assert (error.code, error.message) == ("not_supported", "this engine has no Python namespace")


@pytest.mark.parametrize("code, status", [("operation_failed", 400), ("variable_not_found", 404),
                                          ("bad_request", 400)])
def test_a_worker_error_code_keeps_its_code_and_status(redis_server, code, status):
    client = redis.Redis.from_url(redis_server.db_url(2))
    reply_key = keys.reply(new_id())  # a key of its own: safe beside other tests
    rpc.answer(client, {"reply": reply_key}, error="boom", code=code)  # as the worker answers
    with pytest.raises(TaskkernelError) as raised:
        rpc.wait_reply(client, reply_key, "pull", timeout_s=5)
    assert raised.value.status == status
    assert raised.value.to_dict()["error"] == code
    assert not isinstance(raised.value, EngineUnavailable), "an answer that came is not a timeout (504)"


def test_an_unknown_worker_error_code_is_an_unavailable_engine():
    assert WORKER_ERRORS.get("something_new", EngineUnavailable) is EngineUnavailable
    assert WORKER_ERRORS["operation_failed"] is EngineRefused
