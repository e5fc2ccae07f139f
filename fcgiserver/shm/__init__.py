"""Shared memory between the supervisor and its workers: scoreboard, pool counters, their seqlock."""
