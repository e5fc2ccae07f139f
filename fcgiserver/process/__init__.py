"""Processes: the supervisor, its handles on workers, a worker's life after fork, reload, the pool."""
