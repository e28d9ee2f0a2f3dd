//! The engine thread: owns the [`Scheduler`], takes jobs from the HTTP handlers over a
//! channel, and runs one batched step after another while any sequence is active.
//!
//! The model runs on this one thread (its thread pool does the parallel work); the
//! async handlers never block on it. A job's events go back through a tokio channel
//! whose sender never blocks, and a closed channel (the client went away) ends the
//! sequence at its next token, freeing its cache.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use engine::{
    EngineError, Generation, Scheduler, SchedulerConfig, SequenceEvent, SequenceRequest, TokenEvent,
};
use model::LoadedModel;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What a choice's stream carries back to its handler.
#[derive(Debug)]
pub enum Msg {
    Token(TokenEvent),
    /// The generation, and the bytes its KV cache held at the end.
    Finished(Generation, usize),
    Failed(String),
}

enum Command {
    Job(Box<Job>),
    Shutdown,
}

struct Job {
    request: SequenceRequest,
    sink: engine::EventSink,
}

/// Frees a request's place in the bounded queue when its sink is dropped (the
/// sequence ended, or the job was dropped unserved).
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

pub struct EngineHandle {
    tx: Mutex<mpsc::Sender<Command>>,
    pub metrics: Arc<Metrics>,
    /// Sequences queued or active.
    in_flight: Arc<AtomicUsize>,
    /// Most sequences queued or active (`parallel + max_queue`).
    capacity: usize,
    shutting_down: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread. Fails at once on an invalid configuration.
    pub fn spawn(
        model: Arc<LoadedModel>,
        config: SchedulerConfig,
        max_queue: usize,
    ) -> Result<EngineHandle, EngineError> {
        // Checks the configuration here, where the error can be returned.
        Scheduler::new(&model, config.clone())?;
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let shutting_down = Arc::new(AtomicBool::new(false));
        let capacity = config.max_sequences + max_queue;
        let thread = {
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tokenwise-engine".into())
                .spawn(move || run(&model, config, &rx, &metrics))
                .map_err(|e| EngineError::Invalid(format!("cannot start the engine thread: {e}")))?
        };
        Ok(EngineHandle {
            tx: Mutex::new(tx),
            metrics,
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity,
            shutting_down,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues one sequence per request; their events arrive on the returned channel
    /// tagged with the request's index. 429 when the queue cannot take them all.
    pub fn submit(
        &self,
        requests: Vec<SequenceRequest>,
    ) -> Result<UnboundedReceiver<(usize, Msg)>, ApiError> {
        if self.shutting_down.load(SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let n = requests.len();
        let before = self.in_flight.fetch_add(n, SeqCst);
        if before + n > self.capacity {
            self.in_flight.fetch_sub(n, SeqCst);
            self.metrics.rejected_busy.fetch_add(1, SeqCst);
            return Err(ApiError::busy(format!(
                "the server is busy ({before} sequences queued or running, at most {}); retry later",
                self.capacity
            )));
        }
        let (out, rx) = unbounded_channel();
        let tx = self
            .tx
            .lock()
            .map_err(|_| ApiError::unavailable("the engine thread has stopped"))?;
        for (i, request) in requests.into_iter().enumerate() {
            let sink = event_sink(i, out.clone(), Ticket(self.in_flight.clone()));
            if tx
                .send(Command::Job(Box::new(Job { request, sink })))
                .is_err()
            {
                return Err(ApiError::unavailable("the engine thread has stopped"));
            }
        }
        Ok(rx)
    }

    /// Ends every queued and active sequence with an error event and stops the
    /// engine thread; waits for it.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, SeqCst);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Command::Shutdown);
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(SeqCst)
    }
}

fn event_sink(
    index: usize,
    out: UnboundedSender<(usize, Msg)>,
    ticket: Ticket,
) -> engine::EventSink {
    Box::new(move |ev| {
        // Owned by the sink so the queue place is freed when the sequence ends.
        let _ = &ticket;
        let msg = match ev {
            SequenceEvent::Token(t) => Msg::Token(t.clone()),
            SequenceEvent::Finished {
                generation,
                kv_bytes,
            } => Msg::Finished(generation.clone(), kv_bytes),
            SequenceEvent::Failed(e) => Msg::Failed(e.to_string()),
        };
        match out.send((index, msg)) {
            Ok(()) => ControlFlow::Continue(()),
            // The handler is gone (client disconnected): stop this sequence.
            Err(_) => ControlFlow::Break(()),
        }
    })
}

fn run(
    model: &LoadedModel,
    config: SchedulerConfig,
    rx: &mpsc::Receiver<Command>,
    metrics: &Metrics,
) {
    let Ok(mut sched) = Scheduler::new(model, config.clone()) else {
        return;
    };
    let mut queue: VecDeque<Box<Job>> = VecDeque::new();
    let mut shutdown = false;
    loop {
        if sched.active() == 0 && queue.is_empty() {
            match rx.recv() {
                Ok(Command::Job(j)) => queue.push_back(j),
                Ok(Command::Shutdown) | Err(_) => shutdown = true,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Job(j) => queue.push_back(j),
                Command::Shutdown => shutdown = true,
            }
        }
        if shutdown {
            let err = EngineError::Invalid("the server is shutting down".into());
            sched.fail_all(&err);
            for mut job in queue.drain(..) {
                let _ = (job.sink)(SequenceEvent::Failed(&err));
            }
            metrics.record_step(&engine::StepStats::default(), 0, 0);
            metrics.queue_depth.store(0, SeqCst);
            tracing::info!("engine thread stopped");
            return;
        }
        while sched.has_room() {
            let Some(mut job) = queue.pop_front() else {
                break;
            };
            // Handlers validate before queueing; this catches anything they missed.
            if let Err(e) = Scheduler::validate(model, config.n_ctx, &job.request) {
                let _ = (job.sink)(SequenceEvent::Failed(&e));
                continue;
            }
            if let Err(e) = sched.admit(job.request, job.sink) {
                tracing::error!("admission failed after validation: {e}");
            }
        }
        metrics.queue_depth.store(queue.len(), SeqCst);
        let stats = sched.step();
        metrics.record_step(&stats, sched.active(), sched.kv_bytes());
        metrics
            .prefix_cache_bytes
            .store(sched.prefix_cache_bytes(), SeqCst);
    }
}
