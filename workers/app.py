"""The Celery app as Celery's own tools load it: `celery -A taskkernel.workers.app inspect ping`,
`celery -A taskkernel.workers.app events`, Flower (`celery -A taskkernel.workers.app flower`).

Built from the TASKKERNEL_* settings of the environment (TASKKERNEL_REDIS_URL at least). Workers
answer remote control (inspect, ping) and send events only with TASKKERNEL_TASK_EVENTS=1.
"""

from __future__ import annotations

from taskkernel.settings import load_settings
from taskkernel.celery_wire import make_celery

app = make_celery(load_settings())
