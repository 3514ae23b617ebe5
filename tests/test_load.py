"""A reduced load test in the suite: concurrent cells over HTTP and SSE subscribers, nothing lost."""

import pytest

from bench.load import run_load

pytestmark = pytest.mark.timeout(240)


def test_concurrent_notebooks_lose_no_result_and_no_feed_message(private_service):
    private_service.start_supervisor(pool=10)
    private_service.start_api()
    result = run_load(private_service.api_url, notebooks=10, cells=8, subscribers=4, timeout_s=150)
    assert result["problems"] == []
    # per watched notebook: 8 cells of 5 messages (busy, input, result, reply, idle), the setup cell's
    # 4 and the final check's 5, less the last idle, after which the subscriber stops
    assert result["cells"] == 80 and result["feed_messages"] == 4 * (8 * 5 + 4 + 5 - 1)
    print(f"\nload: {result['cells_per_s']:.1f} cells/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
