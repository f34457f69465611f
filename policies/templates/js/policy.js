// The decision itself, kept apart from WebAssembly so that `npm test` (`node --test`) can run
// it on your own Node: nothing in this file knows about components, only about the few values
// of the training state it reads through a `training` object (see `shouldSave` below).
//
// The rule is "save every `n` batches", exactly like cairn's built-in
// `save_interval = "<n>ba"` (which is Composer's): no save before the first batch, a save at
// the batch event whose batch count is a multiple of `n`, and one extra save when training
// reaches `max_duration` unless that batch was just saved. Change `shouldSave` to change the
// rule.
//
// Counts are BigInts: cairn's counters are WIT `u64`s, which JavaScript receives as BigInts
// (write `3n`, not `3`, and compare with `===` against BigInts only).

/**
 * What the policy remembers between calls. cairn keeps one instance of the component for the
 * whole run and calls it at every event, in order.
 *
 * The `training` object given to `shouldSave` has four methods (`app.js` implements them with
 * cairn's `training` interface, the tests with plain numbers). Each is one call into cairn, so a
 * policy reads only what it needs: here one value per batch event.
 *   - batch(): completed batches so far (BigInt)                        training.now('batch')
 *   - previousBatch(): completed batches before the last batch, or
 *     undefined before the first batch of a (resumed) run               training.previous('batch')
 *   - durationInBatches(): `max_duration` in batches (BigInt), or
 *     undefined in another unit; it never changes during a run          training.duration()
 *   - elapsed(): fraction of training done, 1.0 at the end              training.elapsed()
 */
export class EveryN {
  constructor(n = 1n) {
    this.n = n; // save every `n` batches (config key `n`)
    this.endRead = false; // has `max_duration` been read yet?
    this.endBatch = undefined; // `max_duration` in batches, if in batches
    this.lastSaved = undefined; // the last batch saved at a batch event
  }

  /**
   * Apply the policy's `config` table: an array of [key, value] strings, as cairn renders the
   * TOML. Throws an Error to refuse it (cairn stops the job with its message).
   */
  configure(config) {
    for (const [key, value] of config) {
      if (key !== 'n') {
        throw new Error(`unknown config key '${key}' (this policy takes 'n')`);
      }
      const text = value.trim();
      if (!/^[0-9]+$/.test(text) || BigInt(text) === 0n) {
        throw new Error(`n must be a positive whole number of batches, not '${value}'`);
      }
      this.n = BigInt(text);
    }
  }

  /** Should cairn save a checkpoint at this event ('batch', 'epoch' or 'iteration')? */
  shouldSave(event, training) {
    let batch;
    if (event === 'batch') {
      batch = training.batch(); // a batch has just run
    } else if (event === 'epoch' && training.previousBatch() !== undefined) {
      batch = training.batch();
    } else {
      // An iteration event, or an epoch that ended before any batch ran (after a resume).
      return false;
    }
    // The end of training always gets a checkpoint (once).
    if (this.reachedEnd(batch, training) && this.lastSaved !== batch) {
      return true;
    }
    if (event === 'batch' && batch % this.n === 0n) {
      this.lastSaved = batch;
      return true;
    }
    return false;
  }

  /** Has training reached `max_duration`? Without a call into cairn when it is in batches. */
  reachedEnd(batch, training) {
    if (!this.endRead) {
      this.endBatch = training.durationInBatches();
      this.endRead = true;
    }
    if (this.endBatch !== undefined) {
      return batch >= this.endBatch;
    }
    return training.elapsed() >= 1.0;
  }
}
