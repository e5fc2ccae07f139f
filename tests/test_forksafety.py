"""forksafety: every generator state a worker inherits is replaced after a real os.fork().

Each test forks this test process, runs the after-fork work in the child and pipes the
child's next values back; the parent draws its own next values from the same inherited state.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fcgiserver import forksafety

# Made at import time, like an application's module-level generators.
MODULE_RNG = random.Random()


class SubRandom(random.Random):
    """A subclass with state of its own besides the base generator's."""

    def __init__(self) -> None:
        self.calls = 0
        super().__init__()


SUB_RNG = SubRandom()
NP_RANDOM_STATE = np.random.RandomState()
NP_GENERATOR = np.random.default_rng()
NP_PHILOX = np.random.Generator(np.random.Philox())


class Lcg:
    """A custom generator outside every known class: found only through register()."""

    __slots__ = ("x",)

    def __init__(self, seed: int) -> None:
        self.x = seed

    def seed(self, a: int) -> None:
        self.x = a % (1 << 64)

    def next(self) -> int:
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return self.x

    def getstate(self) -> int:
        return self.x


def run_in_child(fn: Callable[[], Any]) -> Any:
    """Fork, run fn in the child, and return its JSON-able result (child errors re-raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            out = json.dumps({"ok": fn()}).encode()
        except BaseException:
            out = json.dumps({"error": traceback.format_exc()}).encode()
            code = 1
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    if "error" in result:
        raise AssertionError("child failed:\n" + result["error"])
    assert os.waitstatus_to_exitcode(status) == 0
    return result["ok"]


# Each draws the next few values of one generator kind, as JSON-comparable data.
DRAWS: dict[str, Callable[[], Any]] = {
    "module-level Random()": lambda: [MODULE_RNG.random() for _ in range(3)],
    "Random subclass": lambda: [SUB_RNG.random() for _ in range(3)],
    "numpy RandomState": lambda: NP_RANDOM_STATE.random_sample(3).tolist(),
    "numpy Generator (PCG64)": lambda: NP_GENERATOR.random(3).tolist(),
    "numpy Generator (Philox)": lambda: NP_PHILOX.integers(0, 1 << 62, 3).tolist(),
    "numpy legacy global": lambda: np.random.random_sample(3).tolist(),
}


@pytest.fixture
def lcg() -> Iterator[Lcg]:
    gen = forksafety.register(Lcg(12345))
    try:
        yield gen
    finally:
        forksafety.unregister(gen)


@pytest.mark.parametrize("kind", list(DRAWS))
def test_reseed_gives_the_child_a_different_stream(kind: str) -> None:
    draw = DRAWS[kind]

    def child() -> Any:
        forksafety.reseed_after_fork(True)
        return draw()

    in_child = run_in_child(child)
    assert in_child != draw()


@pytest.mark.parametrize("kind", list(DRAWS))
def test_no_reseed_keeps_the_inherited_stream(kind: str) -> None:
    draw = DRAWS[kind]

    def child() -> Any:
        forksafety.reseed_after_fork(False)
        return draw()

    assert run_in_child(child) == draw()


def test_without_reseed_the_child_repeats_the_parent_stream() -> None:
    # The bug this module exists for: plain os.fork() copies a Random()'s state.
    assert run_in_child(lambda: MODULE_RNG.random()) == MODULE_RNG.random()


def test_registered_custom_generator_is_reseeded(lcg: Lcg) -> None:
    def child() -> int:
        forksafety.reseed_after_fork(True)
        return lcg.next()

    assert run_in_child(child) != lcg.next()


def test_registered_generator_is_skipped_without_reseed(lcg: Lcg) -> None:
    def child() -> int:
        forksafety.reseed_after_fork(False)
        return lcg.next()

    assert run_in_child(child) == lcg.next()


def test_registered_callable_runs_once_after_fork() -> None:
    calls: list[int] = []

    def reseeder() -> None:
        calls.append(os.getpid())

    forksafety.register(reseeder)
    try:
        def child() -> list[int]:
            forksafety.reseed_after_fork(True)
            return calls

        child_calls = run_in_child(child)
    finally:
        forksafety.unregister(reseeder)
    assert len(child_calls) == 1 and child_calls[0] != os.getpid()
    assert calls == []


def test_register_rejects_what_it_cannot_reseed() -> None:
    with pytest.raises(TypeError):
        forksafety.register(42)


def test_register_works_as_decorator_and_only_once() -> None:
    @forksafety.register
    def reseeder() -> None:
        pass

    try:
        forksafety.register(reseeder)
        assert [t for t in forksafety.registered() if t is reseeder] == [reseeder]
    finally:
        forksafety.unregister(reseeder)
    assert reseeder not in forksafety.registered()


def test_global_random_differs_after_fork_even_without_reseed() -> None:
    # Python itself reseeds the random module's global instance in a forked child, so an
    # application's random.seed(42) at import never gives workers one stream.
    random.seed(42)

    def child() -> float:
        forksafety.reseed_after_fork(False)
        return random.random()

    assert run_in_child(child) != random.random()
    random.seed()


def test_global_random_seeded_with_42_differs_after_reseed() -> None:
    random.seed(42)

    def child() -> float:
        forksafety.reseed_after_fork(True)
        return random.random()

    assert run_in_child(child) != random.random()
    random.seed()


def test_numpy_gauss_cache_is_not_inherited() -> None:
    rs = np.random.RandomState(7)
    rs.standard_normal()  # leaves the second value of the pair cached
    assert rs.get_state(legacy=False)["has_gauss"] == 1

    def child() -> float:
        forksafety.reseed_after_fork(True)
        return float(rs.standard_normal())

    assert run_in_child(child) != float(rs.standard_normal())


def test_frozen_heap_generators_are_reseeded() -> None:
    def child() -> Any:
        gc.freeze()  # as an application might do before fork to keep pages shared
        assert gc.get_freeze_count() > 0
        forksafety.reseed_after_fork(True)
        return [MODULE_RNG.random(), gc.get_freeze_count() > 0]

    value, still_frozen = run_in_child(child)
    assert still_frozen
    assert value != MODULE_RNG.random()


def test_random_made_in_a_closure_only_is_reseeded() -> None:
    def make() -> Callable[[], float]:
        hidden = random.Random()
        return lambda: hidden.random()

    draw = make()

    def child() -> float:
        forksafety.reseed_after_fork(True)
        return draw()

    assert run_in_child(child) != draw()


def test_the_generators_searched_for_are_tracked_by_the_gc() -> None:
    # The heap scan relies on this; a Python or numpy release that stopped tracking them
    # would silently turn reseeding off.
    for obj in (random.Random(), SubRandom(), np.random.RandomState(), np.random.default_rng(),
                np.random.default_rng().bit_generator):
        assert gc.is_tracked(obj), type(obj)


class PickySeed(random.Random):
    """A subclass whose seed() refuses large integers."""

    def seed(self, a: Any = None, version: int = 2) -> None:
        if isinstance(a, int) and a.bit_length() > 64:
            raise ValueError("seed too large for this generator")
        super().seed(a, version)


def test_subclass_whose_seed_refuses_still_gets_fresh_state() -> None:
    picky = PickySeed(1)

    def child() -> float:
        forksafety.reseed_after_fork(True)
        return picky.random()

    assert run_in_child(child) != picky.random()


def test_system_random_is_left_alone() -> None:
    sysrand = random.SystemRandom()

    def child() -> bool:
        forksafety.reseed_after_fork(True)
        forksafety.rng_fingerprint()
        return isinstance(sysrand.random(), float)

    assert run_in_child(child)


# ---- fingerprint -----------------------------------------------------------------------------

def test_fingerprint_differs_between_parent_and_reseeded_child() -> None:
    parent = forksafety.rng_fingerprint()

    def child() -> str:
        forksafety.reseed_after_fork(True)
        return forksafety.rng_fingerprint().hex()

    assert len(parent) == forksafety.FINGERPRINT_SIZE
    assert run_in_child(child) != parent.hex()


def test_fingerprint_equals_parent_without_reseed() -> None:
    def child() -> str:
        forksafety.reseed_after_fork(False)
        return forksafety.rng_fingerprint().hex()

    in_child = run_in_child(child)
    assert in_child == forksafety.rng_fingerprint().hex()


def test_two_reseeded_children_have_different_fingerprints() -> None:
    def child() -> str:
        forksafety.reseed_after_fork(True)
        return forksafety.rng_fingerprint().hex()

    assert run_in_child(child) != run_in_child(child)


def test_fingerprint_consumes_nothing(lcg: Lcg) -> None:
    twin = random.Random()
    twin.setstate(MODULE_RNG.getstate())
    np_twin = np.random.default_rng()
    np_twin.bit_generator.state = NP_GENERATOR.bit_generator.state
    lcg_before = lcg.x
    forksafety.rng_fingerprint()
    forksafety.rng_fingerprint()
    assert MODULE_RNG.random() == twin.random()
    assert NP_GENERATOR.random() == np_twin.random()
    assert lcg.x == lcg_before


def test_fingerprint_changes_when_a_generator_advances() -> None:
    before = forksafety.rng_fingerprint()
    assert forksafety.rng_fingerprint() == before
    MODULE_RNG.random()
    assert forksafety.rng_fingerprint() != before


def test_fingerprint_ignores_the_global_random_instance() -> None:
    before = forksafety.rng_fingerprint()
    random.random()
    assert forksafety.rng_fingerprint() == before


def test_fingerprint_counts_registered_generators(lcg: Lcg) -> None:
    before = forksafety.rng_fingerprint()
    lcg.next()
    assert forksafety.rng_fingerprint() != before


def test_fingerprint_is_zero_when_there_is_no_generator() -> None:
    code = "from fcgiserver import forksafety; print(forksafety.rng_fingerprint().hex())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "00" * forksafety.FINGERPRINT_SIZE


def test_numpy_is_never_imported_by_forksafety() -> None:
    code = ("import sys; from fcgiserver import forksafety; forksafety.reseed_after_fork(True);"
            "forksafety.rng_fingerprint(); print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


# ---- threads ---------------------------------------------------------------------------------

def test_live_threads_names_a_running_thread() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="forksafety-test-sleeper", daemon=True)
    t.start()
    try:
        assert "forksafety-test-sleeper" in forksafety.live_threads()
    finally:
        stop.set()
        t.join(timeout=30)
    assert "forksafety-test-sleeper" not in forksafety.live_threads()


def test_live_threads_leaves_out_the_main_thread() -> None:
    assert threading.main_thread().name not in forksafety.live_threads()


# ---- the scan made in the parent before fork ---------------------------------------------------

def _no_heap_walk() -> None:
    """In a child: make any walk of the heap fail the test (it would un-share every page)."""
    def forbidden(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("the child walked its heap")

    gc.get_objects = forbidden


@pytest.mark.parametrize("kind", list(DRAWS))
def test_child_of_a_prepared_parent_reseeds_every_kind_without_walking_its_heap(kind: str) -> None:
    draw = DRAWS[kind]

    def child() -> Any:
        _no_heap_walk()
        forksafety.reseed_after_fork(True)
        return draw()

    forksafety.prepare_fork()
    in_child = run_in_child(child)
    assert in_child != draw()


def test_prepared_children_have_fingerprints_of_their_own_without_walking() -> None:
    def child() -> str:
        _no_heap_walk()
        forksafety.reseed_after_fork(True)
        return forksafety.rng_fingerprint().hex()

    forksafety.prepare_fork()
    first = run_in_child(child)
    forksafety.prepare_fork()
    second = run_in_child(child)
    assert len({first, second, forksafety.rng_fingerprint().hex()}) == 3


def test_prepared_child_without_reseed_keeps_the_parent_fingerprint_without_walking() -> None:
    def child() -> str:
        _no_heap_walk()
        forksafety.reseed_after_fork(False)
        return forksafety.rng_fingerprint().hex()

    forksafety.prepare_fork()
    assert run_in_child(child) == forksafety.rng_fingerprint().hex()


def test_prepare_finds_generators_of_a_frozen_heap_and_keeps_it_frozen() -> None:
    def make() -> Callable[[], float]:
        hidden = random.Random()
        return lambda: hidden.random()

    draw = make()
    gc.freeze()
    try:
        forksafety.prepare_fork()
        assert gc.get_freeze_count() > 0

        def child() -> float:
            _no_heap_walk()
            forksafety.reseed_after_fork(True)
            return draw()

        assert run_in_child(child) != draw()
    finally:
        gc.unfreeze()


def test_a_process_not_forked_by_the_preparing_one_scans_for_itself() -> None:
    # The scan belongs to the children of the process that made it: a grandchild (forked
    # later, perhaps after new generators appeared) must look at its own heap.
    def grandchild() -> list[Any]:
        walks = []
        real = gc.get_objects

        def counting(*args: Any) -> list[object]:
            walks.append(1)
            return real(*args)

        gc.get_objects = counting
        late = random.Random(7)  # made after the scan: only a fresh walk finds it
        forksafety.reseed_after_fork(True)
        return [len(walks), late.random() != random.Random(7).random()]

    def child() -> Any:
        return run_in_child(grandchild)

    forksafety.prepare_fork()
    walks, reseeded = run_in_child(child)
    assert walks >= 1 and reseeded


def test_a_generator_made_between_two_prepares_is_reseeded_in_the_next_child() -> None:
    # The scan is taken right before each fork, so what appeared since the previous one
    # (a generator made while serving, a hook's) is found.
    forksafety.prepare_fork()
    late = random.Random(7)

    def child() -> float:
        _no_heap_walk()
        forksafety.reseed_after_fork(True)
        return late.random()

    forksafety.prepare_fork()
    assert run_in_child(child) != random.Random(7).random()
