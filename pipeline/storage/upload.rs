//! Uploads in parallel with a bound on what is in flight: the frames of a dataset as they are
//! written, and batches of objects.

use super::*;

/// Counts from a finished [`Uploader`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Objects written.
    pub objects: u64,
    /// Bytes written.
    pub bytes: u64,
}

type Job = (String, Bytes);

/// Puts many small objects (frames) with a bounded number in flight, overlapping with the
/// caller's compute: [`Uploader::submit`] returns at once while fewer than `in_flight` uploads are
/// queued and blocks otherwise (back-pressure, bounded memory). Works with any [`Store`].
/// A failure that would recur for every object (refused encryption, credentials, an unreachable
/// or stalled endpoint: [`StorageError::stops_batch`]) stops the batch: later objects are not
/// sent (they count as failed), [`Uploader::failed`] tells the caller to stop producing them, and
/// [`Uploader::finish`] reports it. A failure of one object (a bad key) does not stop the others.
pub struct Uploader {
    tx: Option<crossbeam_channel::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    state: Arc<Mutex<UploadState>>,
}

#[derive(Default)]
struct UploadState {
    /// Set by the first failure that would recur for every object ([`StorageError::stops_batch`]).
    stopped: bool,
    stats: UploadStats,
    submitted: usize,
    failed: usize,
    first_error: Option<StorageError>,
}

impl Uploader {
    /// Starts `in_flight` (at least 1) upload threads writing into `store`.
    pub fn new(store: Arc<dyn Store>, in_flight: usize) -> Uploader {
        let in_flight = in_flight.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(in_flight);
        let state = Arc::new(Mutex::new(UploadState::default()));
        let workers = (0..in_flight)
            .map(|i| {
                let (rx, store, state) = (rx.clone(), Arc::clone(&store), Arc::clone(&state));
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || {
                        for (key, data) in rx {
                            {
                                let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                if s.stopped {
                                    s.failed += 1; // not sent: the batch stopped
                                    continue;
                                }
                            }
                            let len = data.len() as u64;
                            let result = store.put(&key, data);
                            let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            match result {
                                Ok(()) => {
                                    s.stats.objects += 1;
                                    s.stats.bytes += len;
                                }
                                Err(err) => {
                                    s.failed += 1;
                                    s.stopped |= err.stops_batch();
                                    // The first failure is the batch's error, which the caller
                                    // reports: logging it here too would say it twice.
                                    if s.first_error.is_some() {
                                        tracing::error!(key = %store.url(&key), error = %err, "upload failed");
                                    } else {
                                        s.first_error = Some(err);
                                    }
                                }
                            }
                        }
                    })
                    .expect("spawning an upload thread")
            })
            .collect();
        Uploader {
            tx: Some(tx),
            workers,
            state,
        }
    }

    /// True once the batch stopped at a failure: nothing more is sent; the caller should stop.
    pub fn failed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped
    }

    /// A handle that tells whether an upload failed, for a thread that does not own the uploader.
    pub fn watch(&self) -> UploadWatch {
        UploadWatch(Arc::clone(&self.state))
    }

    /// Queues one object; blocks while `in_flight` uploads are already waiting. Once the batch
    /// stopped ([`Uploader::failed`]) the object is not sent and counts as failed.
    pub fn submit(&self, key: impl Into<String>, data: impl Into<Bytes>) {
        {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.submitted += 1;
            if s.stopped {
                s.failed += 1; // not sent: the batch stopped
                return;
            }
        }
        let tx = self.tx.as_ref().expect("uploader is open until finish");
        // The workers only stop when the channel closes, so sending cannot fail.
        tx.send((key.into(), data.into()))
            .expect("upload threads are running");
    }

    /// Waits for every queued upload; returns the counts, or [`StorageError::Batch`] with the
    /// first failure when any upload failed.
    pub fn finish(mut self) -> Result<UploadStats> {
        self.tx.take();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                let mut s = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.failed += 1;
            }
        }
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.failed > 0 {
            let first = s
                .first_error
                .take()
                .unwrap_or_else(|| StorageError::InvalidOption("an upload thread panicked".into()));
            return Err(StorageError::Batch {
                failed: s.failed,
                total: s.submitted,
                first: Box::new(first),
            });
        }
        Ok(s.stats)
    }
}

/// Tells whether an [`Uploader`] stopped at a failure ([`Uploader::watch`]).
#[derive(Clone)]
pub struct UploadWatch(Arc<Mutex<UploadState>>);

impl UploadWatch {
    /// True once an upload failed.
    pub fn failed(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.tx.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Puts every `(key, bytes)` pair with at most `in_flight` uploads at once (see [`Uploader`]).
pub fn put_many<I, K, D>(store: &Arc<dyn Store>, items: I, in_flight: usize) -> Result<UploadStats>
where
    I: IntoIterator<Item = (K, D)>,
    K: Into<String>,
    D: Into<Bytes>,
{
    let uploader = Uploader::new(Arc::clone(store), in_flight);
    for (key, data) in items {
        uploader.submit(key, data);
    }
    uploader.finish()
}
