"""The worker side (installed as taskkernel.workers): Celery app, tasks, runtime, capture, supervisor."""
