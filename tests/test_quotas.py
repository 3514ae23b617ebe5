"""Quotas: a burst of concurrent creates never overshoots the notebook limit."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from taskkernel.client import ApiError

pytestmark = pytest.mark.timeout(180)


def test_thirty_concurrent_creates_against_a_quota_of_ten_give_exactly_ten(private_service):
    private_service.start_supervisor(pool=12)
    private_service.start_api(max_notebooks=10, assign_timeout_s=20)
    client = private_service.client()

    def create(_):
        try:
            return client.start()
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(create, range(30)))
    opened = [r for r in results if not isinstance(r, ApiError)]
    refused = [r for r in results if isinstance(r, ApiError)]
    try:
        assert len(opened) == 10
        assert len(refused) == 20 and {(e.status, e.code) for e in refused} == {(429, "quota_exceeded")}
        assert "10 notebooks" in refused[0].message
        opened.pop().close()  # a slot frees when a notebook is deleted
        reopened = client.start()
        opened.append(reopened)
    finally:
        for nb in opened:
            nb.close()


def test_an_engine_file_can_set_its_own_quota(private_service):
    (private_service.config_dir / "engines" / "scarce.toml").write_text(
        'name = "scarce"\nclass = "taskkernel.engines.python:PythonEngine"\nmax_notebooks = 1\npool_size = 1\n')
    host = private_service.start_supervisor(pool=1)
    private_service.start_api()
    private_service.wait_idle(host, "scarce", 1)
    client = private_service.client()
    with client.start("scarce"):
        with pytest.raises(ApiError) as info:
            client.start("scarce")
        assert info.value.status == 429
        with client.start("python") as other:  # other engines are not affected
            assert other.evaluate("1")["status"] == "ok"
