"""Save every `n` batches: the Python twin of `policies/every-n` and of cairn's built-in
`save_interval = "<n>ba"` (Composer's interval scheduler, including the final save).

Like the Rust one, it reads one value of the `training` interface at a batch event (each read is
a call into the host, about 1 µs from Python) and `max_duration` once per run; see
`policies/every-n/src/lib.rs` for why that gives Composer's answer at every event."""

from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import training, types

BATCH = types.TimestampField.BATCH


class WitWorld(wit_world.WitWorld):
    """One instance serves a whole run, so the state lives on the class."""

    n: int = 1
    last_batch_seen: Optional[int] = None
    # Batches in `max_duration`, -1 when it is in another unit; read at the first event.
    end_batch: Optional[int] = None

    def init(self, config: List[Tuple[str, str]]) -> None:
        for key, value in config:
            if key != "n":
                raise Err(f"unknown config key '{key}' (this policy takes 'n')")
            try:
                n = int(value.strip())
            except ValueError:
                n = 0
            if n <= 0:
                raise Err(f"n must be a positive whole number of batches, not '{value}'")
            WitWorld.n = n

    def should_save(self, event: types.Event) -> bool:
        if event == types.Event.BATCH:
            batch = training.now(BATCH)
        elif event == types.Event.EPOCH and training.previous(BATCH) is not None:
            batch = training.now(BATCH)
        else:
            return False
        if WitWorld.reached_end(batch) and WitWorld.last_batch_seen != batch:
            return True
        if event == types.Event.BATCH and batch % WitWorld.n == 0:
            WitWorld.last_batch_seen = batch
            return True
        return False

    @staticmethod
    def reached_end(batch: int) -> bool:
        """`elapsed() >= 1.0`, without the call when `max_duration` is in batches."""
        if WitWorld.end_batch is None:
            d = training.duration()
            WitWorld.end_batch = d.value if d.unit == types.CountUnit.BATCH else -1
        if WitWorld.end_batch >= 0:
            return batch >= WitWorld.end_batch
        return training.elapsed() >= 1.0
