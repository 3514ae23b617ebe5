"""A step of the worker's Celery consumer: each time its broker connection starts, put back what the last one lost.

kombu's Redis transport takes a task message off the queue (BRPOP) before the worker has it and
keeps no copy, so a connection that breaks while a BRPOP's reply is on its way (a Redis shutdown
drops the replies of its last event-loop iteration, yet persists the pop) loses that message: its
cell would stay queued for good. Celery starts its consumer's steps again after every reconnect;
this one runs before the consumer takes any message (Evloop is last).
"""

from __future__ import annotations

from celery import Celery, bootsteps

from taskkernel.celery_wire import TaskMessages


def install(app: Celery, runtime) -> None:
    """Add the step to `app`'s consumer, bound to this worker's `runtime` (workers.runtime.Runtime)."""
    task_message = TaskMessages(app).evaluate

    class RequeueLost(bootsteps.StartStopStep):
        """Queue again the oldest queued cell whose task message is gone (Runtime.requeue_lost)."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, consumer) -> None:
            runtime.requeue_lost(task_message)

    app.steps["consumer"].add(RequeueLost)
