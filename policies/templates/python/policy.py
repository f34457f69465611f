"""The decision itself, kept apart from WebAssembly so that `python3 -m unittest` can test it on
your own machine: nothing in this file knows about components, only about the few values of the
training state it reads through a `training` object (see `Training` below).

The rule is "save every `n` batches", exactly like cairn's built-in `save_interval = "<n>ba"`
(which is Composer's): no save before the first batch, a save at the batch event whose batch
count is a multiple of `n`, and one extra save when training reaches `max_duration` unless that
batch was just saved. Change `EveryN.should_save` to change the rule."""

from typing import List, Optional, Protocol, Tuple

# The checkpoint events cairn asks about, in the order it fires them after a batch: "batch"
# after every batch, "epoch" after the last batch of an epoch, "iteration" after the last
# epoch of an iteration. (`app.py` turns cairn's enum into these strings.)
BATCH, EPOCH, ITERATION = "batch", "epoch", "iteration"


class Training(Protocol):
    """The part of the training state this policy reads. `app.py` implements it with cairn's
    `training` interface; the tests implement it with plain numbers.

    Every method is one call into cairn (about 1 µs each from Python), so a policy reads only
    what it needs: here one value per batch event."""

    def batch(self) -> int:
        """Completed batches so far (`training.now(batch)`)."""

    def previous_batch(self) -> Optional[int]:
        """Completed batches before the last batch; None before the first batch of a (resumed)
        run (`training.previous(batch)`)."""

    def duration_in_batches(self) -> Optional[int]:
        """`max_duration` in batches, None when it is in another unit (`training.duration()`).
        It never changes during a run."""

    def elapsed(self) -> float:
        """Fraction of training done, 1.0 at the end (`training.elapsed()`)."""


class ConfigError(ValueError):
    """A config table the policy refuses; cairn stops the job with its message."""


class EveryN:
    """What the policy remembers between calls. cairn keeps one instance of the component for
    the whole run and calls it at every event, in order."""

    def __init__(self, n: int = 1) -> None:
        self.n = n  # save every `n` batches (config key `n`)
        self.end_read = False  # has `max_duration` been read yet?
        self.end_batch: Optional[int] = None  # `max_duration` in batches, if in batches
        self.last_saved: Optional[int] = None  # the last batch saved at a batch event

    def configure(self, config: List[Tuple[str, str]]) -> None:
        """Apply the policy's `config` table (keys and values are strings, as cairn renders
        the TOML). Raises ConfigError to refuse it."""
        for key, value in config:
            if key != "n":
                raise ConfigError(f"unknown config key '{key}' (this policy takes 'n')")
            try:
                n = int(value.strip())
            except ValueError:
                n = 0
            if n <= 0:
                raise ConfigError(f"n must be a positive whole number of batches, not '{value}'")
            self.n = n

    def should_save(self, event: str, training: Training) -> bool:
        """Should cairn save a checkpoint at this event?"""
        if event == BATCH:
            batch = training.batch()  # a batch has just run
        elif event == EPOCH and training.previous_batch() is not None:
            batch = training.batch()
        else:
            # An iteration event, or an epoch that ended before any batch ran (after a resume).
            return False
        # The end of training always gets a checkpoint (once).
        if self.reached_end(batch, training) and self.last_saved != batch:
            return True
        if event == BATCH and batch % self.n == 0:
            self.last_saved = batch
            return True
        return False

    def reached_end(self, batch: int, training: Training) -> bool:
        """Has training reached `max_duration`? Without a call into cairn when it is in
        batches."""
        if not self.end_read:
            self.end_batch = training.duration_in_batches()
            self.end_read = True
        if self.end_batch is not None:
            return batch >= self.end_batch
        return training.elapsed() >= 1.0
