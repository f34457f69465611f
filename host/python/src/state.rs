//! Where training is, as Python hands it over: Composer's `Timestamp` as a flat tuple (cheap to
//! build at every event, no Composer import on this side) and the training state a
//! `save_interval` policy sees.

use std::time::Duration;

use cairn::policy::{Event, MaxDuration, Timestamp};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// A timestamp from `(iteration, epoch, batch, sample, token, epoch_in_iteration,
/// token_in_iteration, batch_in_epoch, sample_in_epoch, token_in_epoch, total_wct, iteration_wct,
/// epoch_wct, batch_wct)`: `Timestamp.state_dict()` order, wall-clock fields in seconds.
pub fn timestamp(t: &Bound<'_, PyAny>) -> PyResult<Timestamp> {
    let t = t.cast::<PyTuple>().map_err(|_| {
        PyValueError::new_err("a timestamp is a tuple of 10 counters and 4 durations in seconds")
    })?;
    if t.len() != 14 {
        return Err(PyValueError::new_err(format!(
            "a timestamp has 14 fields (10 counters, 4 durations), not {}",
            t.len()
        )));
    }
    let count = |i: usize| -> PyResult<u64> { t.get_item(i)?.extract() };
    let seconds = |i: usize| -> PyResult<Duration> {
        let s: f64 = t.get_item(i)?.extract()?;
        Duration::try_from_secs_f64(s).map_err(|_| {
            PyValueError::new_err(format!(
                "timestamp field {i} is {s} seconds: a duration must be finite and not negative"
            ))
        })
    };
    Ok(Timestamp {
        iteration: count(0)?,
        epoch: count(1)?,
        batch: count(2)?,
        sample: count(3)?,
        token: count(4)?,
        epoch_in_iteration: count(5)?,
        token_in_iteration: count(6)?,
        batch_in_epoch: count(7)?,
        sample_in_epoch: count(8)?,
        token_in_epoch: count(9)?,
        total_wct: seconds(10)?,
        iteration_wct: seconds(11)?,
        epoch_wct: seconds(12)?,
        batch_wct: seconds(13)?,
    })
}

/// A checkpoint event by name; `None` (a save outside any event, Composer's
/// `save_checkpoint_to_save_folder`) counts as a batch save.
pub fn event(name: Option<&str>) -> PyResult<Event> {
    match name {
        None | Some("batch") => Ok(Event::Batch),
        Some("epoch") => Ok(Event::Epoch),
        Some("iteration") => Ok(Event::Iteration),
        Some(other) => Err(PyValueError::new_err(format!(
            "event '{other}' is not one of batch, epoch, iteration"
        ))),
    }
}

/// What a `save_interval` policy sees, owned (the borrowed `TrainingState` is built from it once
/// the GIL is released).
pub struct Training {
    pub timestamp: Timestamp,
    pub previous_timestamp: Option<Timestamp>,
    pub max_duration: MaxDuration,
    pub dataloader_len: Option<u64>,
    pub metrics: Vec<(String, f64)>,
}

/// From `{"timestamp", "previous_timestamp", "max_duration": (value, unit), "dataloader_len",
/// "metrics": {name: float}}`.
pub fn training(state: &Bound<'_, PyDict>) -> PyResult<Training> {
    let get = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        Ok(state.get_item(key)?.filter(|v| !v.is_none()))
    };
    let missing = |key: &str| PyValueError::new_err(format!("the training state has no '{key}'"));
    let max: (i64, String) = get("max_duration")?
        .ok_or_else(|| missing("max_duration"))?
        .extract()?;
    let text = format!("{}{}", max.0, max.1);
    let max_duration = cairn::config::parse_max_duration(&text).map_err(PyValueError::new_err)?;
    let mut metrics = Vec::new();
    if let Some(m) = get("metrics")? {
        for (k, v) in m.cast::<PyDict>().map_err(PyErr::from)?.iter() {
            metrics.push((k.extract::<String>()?, v.extract::<f64>()?));
        }
    }
    Ok(Training {
        timestamp: timestamp(&get("timestamp")?.ok_or_else(|| missing("timestamp"))?)?,
        previous_timestamp: get("previous_timestamp")?
            .map(|t| timestamp(&t))
            .transpose()?,
        max_duration,
        dataloader_len: get("dataloader_len")?.map(|n| n.extract()).transpose()?,
        metrics,
    })
}
