"""The worker freezes its start-up heap (models, libraries) so full garbage collections stop pausing the hot
path; a hot reload freezes again, and what was frozen before must still be freeable."""
from __future__ import annotations

import gc
import weakref

from streams.app import freeze_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_live_objects_leave_the_collectors_reach():
    gc.unfreeze()
    try:
        keep = _Node()
        assert freeze_heap() >= 0.0
        assert gc.get_freeze_count() > 0
        assert not any(obj is keep for obj in gc.get_objects())  # frozen: not tracked by any generation
    finally:
        gc.unfreeze()


def test_an_object_frozen_before_a_reload_is_freed_after_it():
    gc.unfreeze()
    try:
        old_model = _Node()
        gone = weakref.ref(old_model)
        freeze_heap()  # start-up: the old model is frozen while in use
        del old_model  # hot reload: the worker drops it; the cycle keeps it alive until collected
        assert gone() is not None
        freeze_heap()  # the reload's freeze unfreezes first, so the collection frees it
        assert gone() is None
    finally:
        gc.unfreeze()
