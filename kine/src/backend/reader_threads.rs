//! Database connections for readers, each owned by a thread of its own.
//!
//! The clients of external databases block on a small runtime of their
//! own, which must not run on the server's async threads. Readers hand a
//! query to one of these threads and block on the reply, as they block on
//! a SQLite read. A connection that broke is opened again before its next
//! query.

use std::sync::mpsc::{Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

type Job<C> = Box<dyn FnOnce(&mut Option<C>, &dyn Fn() -> Option<C>) + Send>;

/// A pool of connection-owning threads.
pub(crate) struct ReaderThreads<C> {
    jobs: Mutex<Sender<Job<C>>>,
}

impl<C: Send + 'static> ReaderThreads<C> {
    /// Starts one thread per client. `healthy` tells whether a client is
    /// usable; `reconnect` makes a new one when it is not.
    pub(crate) fn start(
        name: &str,
        clients: Vec<C>,
        healthy: fn(&C) -> bool,
        reconnect: impl Fn() -> Option<C> + Send + Sync + 'static,
    ) -> Result<Self> {
        let (tx, rx) = channel::<Job<C>>();
        let rx = Arc::new(Mutex::new(rx));
        let reconnect = Arc::new(reconnect);
        for (i, client) in clients.into_iter().enumerate() {
            let (rx, reconnect) = (rx.clone(), reconnect.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let mut client = Some(client);
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        if !client.as_ref().is_some_and(healthy) {
                            client = reconnect();
                        }
                        job(&mut client, &|| reconnect());
                    }
                })
                .map_err(|e| Error::Storage(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(ReaderThreads {
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `f` on a connection and waits for its answer. A connection
    /// found broken by `f` (a database restart) is opened again and `f`
    /// tried once more: reads are idempotent.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl Fn(&mut C) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = sync_channel(1);
        let job: Job<C> = Box::new(move |client, reconnect| {
            let mut result = match client {
                Some(c) => f(c),
                None => Err(Error::Storage("the database is unreachable".into())),
            };
            if matches!(result, Err(Error::CommitUnknown(_))) {
                *client = reconnect();
                if let Some(c) = client {
                    result = f(c);
                }
            }
            let _ = reply.send(result);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| Error::Stopped)?;
        answer.recv().map_err(|_| Error::Stopped)?
    }
}
