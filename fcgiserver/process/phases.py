"""The supervisor's phases and the transitions allowed between them, in one table.

The supervisor changes phase only through `Supervisor._enter()`, which checks the move here
first and sends the systemd notification that belongs to it (READY, RELOADING, STOPPING), so a
notification cannot go out without the phase it announces, nor twice for one change.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["TRANSITIONS", "IllegalTransition", "Phase", "check"]


class Phase(Enum):
    # The first generation is booting; nothing announced yet. A re-exec'd image starts in
    # RELOADING instead: the previous image announced readiness and its workers serve.
    STARTING = "starting"
    # The current generation is complete and announced ready.
    RUNNING = "running"
    # A reload by re-exec: a separate process checks that the new code loads before this one
    # replaces itself; the running generation serves meanwhile.
    CHECKING = "checking"
    # A new generation is booting beside the one that serves until it is complete.
    RELOADING = "reloading"
    STOPPING = "stopping"  # graceful: in-flight requests may finish
    QUITTING = "quitting"  # immediate

    @property
    def serving(self) -> bool:
        """Workers are kept, replaced and started (False once a stop has begun)."""
        return self not in (Phase.STOPPING, Phase.QUITTING)


_STOPS = frozenset({Phase.STOPPING, Phase.QUITTING})

# Every move the supervisor may make; anything else is a bug and is refused.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    # A HUP before the first generation is ready starts a new one, as it always did.
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.CHECKING, Phase.RELOADING}) | _STOPS,
    Phase.RUNNING: frozenset({Phase.CHECKING, Phase.RELOADING}) | _STOPS,
    # Back to the phase the check began in when the new code does not load or the re-exec
    # fails (a generation that was booting then still completes as a start or a reload);
    # when it succeeds this process becomes the new image, which starts in RELOADING.
    Phase.CHECKING: frozenset({Phase.STARTING, Phase.RUNNING, Phase.RELOADING}) | _STOPS,
    # RELOADING -> RELOADING: a HUP during a reload starts yet another generation, and the one
    # that was booting is retired with the old ones once the newest is complete. CHECKING: a
    # HUP to a re-exec'd image whose own generation is still booting.
    Phase.RELOADING: frozenset({Phase.RUNNING, Phase.CHECKING, Phase.RELOADING}) | _STOPS,
    # A second Ctrl-C (or a QUIT) turns a graceful stop into an immediate one.
    Phase.STOPPING: frozenset({Phase.QUITTING}),
    Phase.QUITTING: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, old: Phase, new: Phase) -> None:
        super().__init__(f"the supervisor cannot go from {old.value} to {new.value}")
        self.old = old
        self.new = new


def check(old: Phase, new: Phase) -> None:
    """Raise IllegalTransition unless the table allows `old` -> `new`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)
