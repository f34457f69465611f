"""Tests of the decision logic in `policy.py`, on your own Python (no WebAssembly):

    python3 -m unittest        # or: pytest
"""

import unittest
from typing import List, Optional

from policy import BATCH, EPOCH, ITERATION, ConfigError, EveryN


class Fake:
    """A fake training state: where training is, and how long it runs."""

    def __init__(self, batch: int, max_batches: int) -> None:
        self._batch, self.max_batches = batch, max_batches

    def batch(self) -> int:
        return self._batch

    def previous_batch(self) -> Optional[int]:
        return self._batch - 1 if self._batch > 0 else None

    def duration_in_batches(self) -> Optional[int]:
        return self.max_batches

    def elapsed(self) -> float:
        return self._batch / self.max_batches


def saves(policy: EveryN, epochs: int, per_epoch: int) -> List[int]:
    """The batches at which `policy` saves over a run of `epochs` epochs of `per_epoch`
    batches, firing events in cairn's order."""
    max_batches = epochs * per_epoch
    saved: List[int] = []
    for batch in range(1, max_batches + 1):
        state = Fake(batch, max_batches)
        events = [BATCH] + ([EPOCH] if batch % per_epoch == 0 else [])
        for event in events:
            # cairn saves at most once per batch.
            if policy.should_save(event, state) and (not saved or saved[-1] != batch):
                saved.append(batch)
    return saved


class EveryNTest(unittest.TestCase):
    def test_saves_every_n_batches_and_at_the_end(self) -> None:
        # Like `cairn simulate --save-interval 3ba --max-duration 2ep --batches-per-epoch 4`.
        self.assertEqual(saves(EveryN(3), 2, 4), [3, 6, 8])
        self.assertEqual(saves(EveryN(1), 1, 3), [1, 2, 3])
        self.assertEqual(saves(EveryN(4), 2, 4), [4, 8])

    def test_config_sets_n(self) -> None:
        policy = EveryN()
        policy.configure([("n", " 500 ")])
        self.assertEqual(policy.n, 500)

    def test_config_refuses_bad_values(self) -> None:
        for config in ([("n", "0")], [("n", "ten")], [("every", "3")]):
            with self.assertRaises(ConfigError):
                EveryN().configure(config)

    def test_never_saves_at_an_iteration_event(self) -> None:
        self.assertFalse(EveryN(1).should_save(ITERATION, Fake(3, 3)))


if __name__ == "__main__":
    unittest.main()
