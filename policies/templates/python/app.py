"""{{name}}: a cairn `save_interval` policy in Python, built into a WebAssembly component by
componentize-py (see README.md).

This file connects the decision in `policy.py` to cairn. cairn loads the component
(`{{name}}.wasm`), calls `init` once with the policy's `config` table, then `should_save` at
every checkpoint event of the run:

    [checkpoint]
    save_interval = { wasm = "{{name}}.wasm", config = { n = 500 } }

The contract is the WIT file `wit/policy.wit` (package `cairn:policy@0.1.0`, world
`save-interval`); read it for every function cairn offers. componentize-py generates the
`wit_world` package from it at build time: `wit_world.WitWorld` lists the exports to implement,
`wit_world.imports.training` holds the functions to read the training state, and
`wit_world.imports.types` the WIT types. The component runs sandboxed: no files, environment,
network, a fixed clock, and every call is bounded by fuel, time and memory (`[sandbox]` in the
job's TOML; a Python component needs `memory_limit_mib >= 24`)."""

from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import training, types

from policy import BATCH, EPOCH, ITERATION, ConfigError, EveryN

EVENTS = {types.Event.BATCH: BATCH, types.Event.EPOCH: EPOCH, types.Event.ITERATION: ITERATION}


class Cairn:
    """cairn's `training` interface, seen as the `Training` of `policy.py`. Each method is one
    call into cairn."""

    def batch(self) -> int:
        return training.now(types.TimestampField.BATCH)

    def previous_batch(self) -> Optional[int]:
        return training.previous(types.TimestampField.BATCH)

    def duration_in_batches(self) -> Optional[int]:
        d = training.duration()
        return d.value if d.unit == types.CountUnit.BATCH else None

    def elapsed(self) -> float:
        return training.elapsed()


# The policy's state. cairn keeps one instance of the component for the whole run (a new one
# only after a trap), so module globals are the policy's memory between calls.
POLICY = EveryN()
CAIRN = Cairn()


class WitWorld(wit_world.WitWorld):
    """The component: implements the world's exports."""

    def init(self, config: List[Tuple[str, str]]) -> None:
        """Called once, before any `should_save`, with the `config` table as strings. Raising
        `Err(message)` stops the job with your message."""
        try:
            POLICY.configure(config)
        except ConfigError as e:
            raise Err(str(e))

    def should_save(self, event: types.Event) -> bool:
        """Called at every checkpoint event; True saves a checkpoint."""
        return POLICY.should_save(EVENTS[event], CAIRN)
