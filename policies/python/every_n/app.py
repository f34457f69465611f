"""Save every `n` batches: the Python twin of `policies/every-n` and of cairn's built-in
`save_interval = "<n>ba"` (Composer's interval scheduler, including the final save)."""

from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import training, types

BATCH = types.TimestampField.BATCH


class WitWorld(wit_world.WitWorld):
    """One instance serves a whole run, so the state lives on the class."""

    n: int = 1
    last_batch_seen: Optional[int] = None

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
        prev_batch = training.previous(BATCH)
        if prev_batch is None:
            return False
        batch = training.now(BATCH)
        final_event = event in (types.Event.BATCH, types.Event.EPOCH)
        if final_event and training.elapsed() >= 1.0 and WitWorld.last_batch_seen != batch:
            return True
        n = WitWorld.n
        if event == types.Event.BATCH and prev_batch // n != batch // n:
            WitWorld.last_batch_seen = batch
            return True
        return False
