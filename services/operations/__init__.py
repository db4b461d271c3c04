"""Operating workers: the supervisor of ``leveret worker --processes N`` and health checks."""
