// Tests of the decision logic in `policy.js`, on your own Node (no WebAssembly):
//
//     npm test          # node --test
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { EveryN } from './policy.js';

/** A fake training state: where training is, and how long it runs. */
function fake(batch, maxBatches) {
  return {
    batch: () => batch,
    previousBatch: () => (batch > 0n ? batch - 1n : undefined),
    durationInBatches: () => maxBatches,
    elapsed: () => Number(batch) / Number(maxBatches),
  };
}

/** The batches at which `policy` saves over `epochs` epochs of `perEpoch` batches, events in
 * cairn's order. */
function saves(policy, epochs, perEpoch) {
  const maxBatches = epochs * perEpoch;
  const saved = [];
  for (let batch = 1n; batch <= maxBatches; batch++) {
    const events = batch % perEpoch === 0n ? ['batch', 'epoch'] : ['batch'];
    for (const event of events) {
      // cairn saves at most once per batch.
      if (policy.shouldSave(event, fake(batch, maxBatches)) && saved.at(-1) !== batch) {
        saved.push(batch);
      }
    }
  }
  return saved;
}

test('saves every n batches and at the end', () => {
  // Like `cairn simulate --save-interval 3ba --max-duration 2ep --batches-per-epoch 4`.
  assert.deepEqual(saves(new EveryN(3n), 2n, 4n), [3n, 6n, 8n]);
  assert.deepEqual(saves(new EveryN(1n), 1n, 3n), [1n, 2n, 3n]);
  assert.deepEqual(saves(new EveryN(4n), 2n, 4n), [4n, 8n]);
});

test('config sets n', () => {
  const policy = new EveryN();
  policy.configure([['n', ' 500 ']]);
  assert.equal(policy.n, 500n);
});

test('config refuses bad values', () => {
  for (const config of [[['n', '0']], [['n', 'ten']], [['every', '3']]]) {
    assert.throws(() => new EveryN().configure(config));
  }
});

test('never saves at an iteration event', () => {
  assert.equal(new EveryN(1n).shouldSave('iteration', fake(3n, 3n)), false);
});
