//! Saves written behind training (`async_save`): training waits only for the snapshot.
//!
//! At a due save the training thread asks the policy, takes the snapshot, runs the filter and
//! copies the tensors' bytes into the staging pool ([`pool`]); then a writer thread takes the
//! [`Committer`] and the staged checkpoint and does the rest (write, fsync, rename, `latest`, the
//! upload, retention) while training goes on. One save is in flight at most: the next due save
//! first waits for it ([`Writer::wait`]), which keeps saves, and `latest`, in order, and lets the
//! staging buffers be reused. A failure behind training is kept until the training thread next
//! calls the saver, which returns it.
//!
//! PyTorch's DCP `async_save`, torchsnapshot's `async_take` and Orbax's `AsyncCheckpointer` make
//! the same split; Orbax likewise waits for the previous save before staging the next.

pub mod pool;

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::thread::{self, JoinHandle};

use crate::commit::{Committer, Outcome, WriteJob};
use crate::error::{Error, Result};
use crate::saver::Pending;

/// Who holds the [`Committer`]: the saver, or the thread writing the save in flight.
pub(crate) enum Writer {
    /// Nothing is being written (boxed: it moves to the writer thread and back at every save).
    Idle(Box<Committer>),
    /// A save is being written behind training; its thread holds the committer.
    Busy(Box<InFlight>),
    /// The writer thread could not hand the committer back (it cannot happen short of a bug:
    /// a panic while writing is caught and reported as that save's failure).
    Lost,
}

/// The save being written behind training.
pub(crate) struct InFlight {
    /// The save, as training took it.
    taken: Pending,
    thread: JoinHandle<(Box<Committer>, Outcome)>,
}

impl Writer {
    /// The committer, for work on the training thread (after [`Writer::wait`]).
    pub fn idle(&mut self) -> Result<&mut Committer> {
        match self {
            Writer::Idle(c) => Ok(c),
            Writer::Busy(_) | Writer::Lost => Err(Error::WriterLost),
        }
    }

    /// Start writing `job` (taken as `taken`) on a thread of its own, with the committer.
    pub fn start(&mut self, job: WriteJob, taken: Pending) -> Result<()> {
        let mut committer = match std::mem::replace(self, Writer::Lost) {
            Writer::Idle(c) => c,
            other => {
                *self = other;
                return Err(Error::WriterLost);
            }
        };
        let path = job.path.clone();
        // The committer is lost with the closure if no thread can be started: the saver then
        // refuses further saves (`WriterLost`) rather than write them out of order.
        let thread = thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || {
                let save = || match writer_starts(&job.path) {
                    Ok(()) => committer.save(job),
                    Err(error) => Outcome::Failed {
                        durable: false,
                        error,
                    },
                };
                let outcome = panic::catch_unwind(AssertUnwindSafe(save)).unwrap_or_else(|panic| {
                    Outcome::Failed {
                        durable: false,
                        error: Error::WriterPanicked {
                            message: panic_message(panic.as_ref()),
                        },
                    }
                });
                (committer, outcome)
            });
        match thread {
            Ok(thread) => {
                *self = Writer::Busy(Box::new(InFlight { taken, thread }));
                Ok(())
            }
            Err(e) => Err(Error::io("start a writer thread for", path)(e)),
        }
    }

    /// Whether a save is being written and its thread has not finished yet.
    pub fn is_writing(&self) -> bool {
        matches!(self, Writer::Busy(f) if !f.thread.is_finished())
    }

    /// Wait for the save in flight, if any: the save and what became of it.
    pub fn wait(&mut self) -> Option<(Pending, Outcome)> {
        let InFlight { taken, thread } = match std::mem::replace(self, Writer::Lost) {
            Writer::Busy(in_flight) => *in_flight,
            other => {
                *self = other;
                return None;
            }
        };
        let outcome = match thread.join() {
            Ok((committer, outcome)) => {
                *self = Writer::Idle(committer);
                outcome
            }
            // Only a panic that escaped `catch_unwind` gets here; the committer went with it.
            Err(panic) => Outcome::Failed {
                durable: false,
                error: Error::WriterPanicked {
                    message: panic_message(panic.as_ref()),
                },
            },
        };
        Some((taken, outcome))
    }
}

/// The writer thread begins `path` (failpoint `writer::start`: a test holds, slows down or fails a
/// save behind training here; only those saves reach it).
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn writer_starts(path: &Path) -> Result<()> {
    cairn_format::failpoint!("writer::start", |source| Error::Io {
        action: "save",
        path: path.to_path_buf(),
        source,
    });
    Ok(())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
