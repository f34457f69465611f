// Save every `n` batches: the JavaScript twin of `policies/every-n` (Rust) and
// `policies/python/every_n`, and so of cairn's built-in `save_interval = "<n>ba"`
// (Composer's interval scheduler, including the final save at `max_duration`).
//
// Like the others it reads one value of the `training` interface at a batch event (each read
// is a call into the host) and `max_duration` once per run; `policies/every-n/src/lib.rs`
// says why that gives Composer's answer at every event.
//
// componentize-js maps the WIT to JavaScript: imports are ES modules named after the WIT
// interface, exports are the module's exported functions in camelCase, enums are their case
// names as strings ('batch'), u64/s64 are BigInts, `option<T>` is T or undefined, and a
// `result<_, string>` export returns normally for `ok` and throws the error string for `err`.

import { now, previous, duration, elapsed } from 'cairn:policy/training@0.1.0';

// One instance serves a whole run, so the state lives in the module.
let n = 1n;
let lastBatchSeen; // the last batch this policy said yes to at a batch event
let endBatch; // batches in `max_duration`, -1n in another unit; read at the first event

export function init(config) {
  for (const [key, value] of config) {
    if (key !== 'n') {
      throw `unknown config key '${key}' (this policy takes 'n')`;
    }
    const text = value.trim();
    if (!/^[0-9]+$/.test(text) || BigInt(text) === 0n) {
      throw `n must be a positive whole number of batches, not '${value}'`;
    }
    n = BigInt(text);
  }
}

// `elapsed() >= 1.0`, without the call when `max_duration` is in batches.
function reachedEnd(batch) {
  if (endBatch === undefined) {
    const d = duration();
    endBatch = d.unit === 'batch' ? d.value : -1n;
  }
  return endBatch >= 0n ? batch >= endBatch : elapsed() >= 1.0;
}

export function shouldSave(event) {
  let batch;
  if (event === 'batch') {
    batch = now('batch');
  } else if (event === 'epoch' && previous('batch') !== undefined) {
    batch = now('batch');
  } else {
    return false;
  }
  if (reachedEnd(batch) && lastBatchSeen !== batch) {
    return true;
  }
  if (event === 'batch' && batch % n === 0n) {
    lastBatchSeen = batch;
    return true;
  }
  return false;
}
