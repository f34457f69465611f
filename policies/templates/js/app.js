// {{name}}: a cairn `save_interval` policy in JavaScript, built into a WebAssembly component by
// componentize-js (see README.md).
//
// This file connects the decision in `policy.js` to cairn. cairn loads the component
// (`{{name}}.wasm`), calls `init` once with the policy's `config` table, then `shouldSave` at
// every checkpoint event of the run:
//
//     [checkpoint]
//     save_interval = { wasm = "{{name}}.wasm", config = { n = 500 } }
//
// The contract is the WIT file `wit/policy.wit` (package `cairn:policy@0.1.0`, world
// `save-interval`); read it for every function cairn offers. componentize-js maps it to
// JavaScript:
//   - each imported interface is a module: `cairn:policy/training@0.1.0` exports `now`,
//     `previous`, `duration`, `elapsed`, `dataloaderLen`, `metric`, `metrics`;
//   - each export of the world is an exported function of this module, in camelCase
//     (`init`, `shouldSave`);
//   - enums are their case names as strings ('batch'), u64/s64 are BigInts, `option<T>` is
//     the value or undefined, records are objects, lists are arrays;
//   - a `result<_, string>` export returns normally for `ok` and throws the error string for
//     `err`.
// The component runs sandboxed: no files, environment, network, a fixed clock, and every call
// is bounded by fuel, time and memory (`[sandbox]` in the job's TOML; the JavaScript engine
// needs more than the defaults, see README.md).

import { now, previous, duration, elapsed } from 'cairn:policy/training@0.1.0';

import { EveryN } from './policy.js';

// cairn's `training` interface, seen as the `training` object of `policy.js`. Each method is
// one call into cairn.
const cairn = {
  batch: () => now('batch'),
  previousBatch: () => previous('batch'),
  durationInBatches: () => {
    const d = duration();
    return d.unit === 'batch' ? d.value : undefined;
  },
  elapsed: () => elapsed(),
};

// The policy's state. cairn keeps one instance of the component for the whole run (a new one
// only after a trap), so module globals are the policy's memory between calls.
const policy = new EveryN();

/**
 * Called once, before any `shouldSave`, with the `config` table as [key, value] strings.
 * Throwing a string refuses the configuration: cairn stops the job with your message.
 */
export function init(config) {
  try {
    policy.configure(config);
  } catch (e) {
    throw e instanceof Error ? e.message : String(e);
  }
}

/** Called at every checkpoint event ('batch', 'epoch' or 'iteration'); true saves. */
export function shouldSave(event) {
  return policy.shouldSave(event, cairn);
}
