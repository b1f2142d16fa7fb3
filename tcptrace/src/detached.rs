//! Output written by a thread of its own, so that a reader of it that stops reading (a pager
//! left paused, a slow pipe or SSH link, Ctrl-S, a terminal pane nobody drains) holds up that
//! thread and never the live loop, which shares its thread with the reader of the kernel's
//! rings: held up there, it let the rings fill and the kernel drop events, so the summary
//! and the aggregates went short too (`watch` beside the churn, its stdout a pipe nobody
//! read: see the root test `a_stream_nobody_reads_loses_no_events`).
//!
//! What is written is gathered in memory and handed to the thread in chunks that end at a
//! line end (at a flush, whatever is gathered). At most `limit` bytes wait handed over and
//! unwritten; a chunk past that is dropped whole and counted ([`Dropped`]), so a stream
//! that does not keep up loses whole lines, and says how many, while every event still
//! reaches the figures. It is for outputs whose reader can stop for good (a pipe, a
//! terminal, a socket): `watch` writes a file as it always did, on its own thread, since a
//! disk is only ever slow for a while. `top` writes its frames through one as well, and
//! draws a frame only when the last one is out ([`Handle::busy`]), so it never drops one.
//!
//! The thread's first write error (a closed pipe, a terminal gone) comes back from the next
//! write or flush, so `| head` still ends the run as before. Nothing here knows about the
//! rest of the tool.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Bytes gathered before a chunk is handed over (at its last line end): at the JSON stream's
/// rate, 64 KiB chunks cost 10-20% more CPU than writing on the loop's own thread did (a
/// hand-over and a wake-up each); 256 KiB chunks cost none measurable.
const CHUNK: usize = 256 << 10;

/// Writes to a pipe of at most this many bytes (PIPE_BUF) are all or nothing: one blocked
/// for want of room has written none of its bytes.
pub const PIPE_PIECE: usize = 4096;

/// What the thread and the writer share.
#[derive(Default)]
struct Shared {
    /// Chunks handed over, oldest first. The thread writes the front one and takes it off
    /// once it is out, so the queue holds what the output has not taken.
    queue: Mutex<VecDeque<Arc<Vec<u8>>>>,
    /// Written chunks' buffers, for the writer to gather into again (a fresh buffer
    /// per chunk, freed by the other thread, cost page faults and TLB shootdowns).
    spare: Mutex<Vec<Vec<u8>>>,
    /// Set with `failed`: checked on every write without taking the lock.
    broken: AtomicBool,
    /// A chunk was handed over, or the writer ended.
    wake: Condvar,
    /// Bytes of the front chunk written so far.
    front_written: AtomicUsize,
    /// Bytes in the queue not written yet.
    queued_bytes: AtomicU64,
    /// The writer ended: the thread stops once the queue is empty.
    closed: AtomicBool,
    /// The writer stopped waiting: the thread writes nothing more.
    abandoned: AtomicBool,
    /// Dropped for want of room, or left unwritten at the end.
    dropped_bytes: AtomicU64,
    dropped_lines: AtomicU64,
    /// The thread's first write error (kind and text), returned from every later call.
    failed: Mutex<Option<(io::ErrorKind, String)>>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Vec<u8>>>> {
        // A queue whose lock a panic poisoned is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_failed(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Keeps the first error.
    fn fail(&self, e: io::Error) {
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert((e.kind(), e.to_string()));
        }
        self.broken.store(true, Ordering::SeqCst);
    }

    /// A buffer to gather the next chunk in: a written chunk's, or a new one.
    fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK + CHUNK / 4))
    }

    /// Keeps a written chunk's buffer for [`Shared::buffer`] (a few at most).
    fn recycle(&self, chunk: Arc<Vec<u8>>) {
        if let Ok(mut v) = Arc::try_unwrap(chunk)
            && v.capacity() >= CHUNK
            && let Ok(mut spare) = self.spare.lock()
            && spare.len() < 4
        {
            v.clear();
            spare.push(v);
        }
    }

    fn count_dropped(&self, bytes: &[u8]) {
        self.dropped_bytes
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        self.dropped_lines
            .fetch_add(line_ends(bytes), Ordering::SeqCst);
    }

    /// The next chunk to write (the front, left in the queue), or `None` once the writer
    /// has ended and the queue is empty, or the writer stopped waiting.
    fn next(&self) -> Option<Arc<Vec<u8>>> {
        let mut q = self.queue();
        loop {
            if self.abandoned.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(front) = q.front() {
                return Some(Arc::clone(front));
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The thread: writes the front chunk piece by piece, counting each piece out, then
    /// takes it off the queue. After an error it writes nothing and only empties the queue.
    fn run(&self, out: &mut impl io::Write, piece: usize) {
        while let Some(chunk) = self.next() {
            let mut at = 0;
            while at < chunk.len() && !self.is_failed() && !self.abandoned.load(Ordering::SeqCst) {
                let end = chunk.len().min(at.saturating_add(piece));
                match out.write(&chunk[at..end]) {
                    Ok(0) => self.fail(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        at += n;
                        self.front_written.store(at, Ordering::SeqCst);
                        self.queued_bytes.fetch_sub(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.fail(e),
                }
            }
            if at == chunk.len()
                && let Err(e) = out.flush()
            {
                self.fail(e);
            }
            let mut q = self.queue();
            if self.abandoned.load(Ordering::SeqCst) {
                return;
            }
            q.pop_front();
            self.front_written.store(0, Ordering::SeqCst);
            drop(q);
            // What an error left unwritten is not waiting any more (nor counted dropped: the
            // error ends the run).
            self.queued_bytes
                .fetch_sub((chunk.len() - at) as u64, Ordering::SeqCst);
            self.recycle(chunk);
        }
    }
}

/// Lines and bytes that never reached the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

/// A [`Detached`] seen from outside, once the writer itself is handed away (to a sink, to
/// the terminal backend).
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

impl Handle {
    /// The lines and bytes dropped so far.
    pub fn dropped(&self) -> Dropped {
        Dropped {
            lines: self.0.dropped_lines.load(Ordering::SeqCst),
            bytes: self.0.dropped_bytes.load(Ordering::SeqCst),
        }
    }

    /// Whether bytes handed over are not written yet.
    pub fn busy(&self) -> bool {
        self.0.queued_bytes.load(Ordering::SeqCst) > 0
    }

    /// Waits up to `timeout` for what is handed over to be written; whether it was.
    pub fn settle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.busy() && Instant::now() < until {
            thread::sleep(Duration::from_millis(2));
        }
        !self.busy()
    }
}

/// An [`io::Write`] whose bytes a thread of its own writes to the real output.
pub struct Detached {
    buf: Vec<u8>,
    shared: Arc<Shared>,
    limit: u64,
    /// Starts the thread, with the first chunk: see [`Detached::new`].
    start: Option<Box<dyn FnOnce() -> io::Result<()>>>,
    /// How long dropping the writer waits for the thread to write what is queued.
    drain: Duration,
    warned: bool,
    /// No warning on stderr when dropping starts (see [`Detached::quiet`]).
    quiet: bool,
}

fn line_ends(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Detached {
    /// A writer whose thread `name` writes to `out`, with at most `limit` bytes queued (then
    /// whole chunks are dropped), in writes of at most `piece` bytes; dropping the writer
    /// waits up to `drain` for the queue to be written. A blocked write says nothing of what
    /// it wrote until it returns, so what the end counts as not written is exact to a
    /// piece: [`PIPE_PIECE`] for a pipe.
    ///
    /// The thread starts with the first chunk handed over, not here: a live run's output
    /// is set up before the run drops its capabilities (see `privileges`), which belong to
    /// threads, and its first line comes after; a thread started here would keep them.
    pub fn new<W: io::Write + Send + 'static>(
        mut out: W,
        name: &str,
        limit: usize,
        piece: usize,
        drain: Duration,
    ) -> Self {
        let piece = piece.max(1);
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let name = name.to_owned();
        // Never joined: a flush the output blocks must not hold up the end (the thread ends
        // on its own once the queue is written, or with the process).
        let start = move || {
            thread::Builder::new()
                .name(name)
                .spawn(move || s.run(&mut out, piece))
                .map(drop)
        };
        Self {
            start: Some(Box::new(start)),
            buf: Vec::with_capacity(CHUNK),
            shared,
            limit: limit as u64,
            drain,
            warned: false,
            quiet: false,
        }
    }

    /// Says nothing on stderr when it starts dropping: for an output that is stderr's own
    /// file (one terminal for both), where a warning would block on what stopped.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// A handle that outlives the hand-over of the writer.
    pub fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.shared))
    }

    fn failed(&self) -> io::Result<()> {
        if !self.shared.is_failed() {
            return Ok(());
        }
        match self.shared.failed.lock().ok().and_then(|f| f.clone()) {
            Some((kind, text)) => Err(io::Error::new(kind, text)),
            None => Ok(()),
        }
    }

    /// Hands the first `n` gathered bytes to the thread (starting it with the first), or
    /// drops them when the queue is full.
    fn hand_over(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if let Some(start) = self.start.take() {
            start().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting the output's writer thread: {e} (out of threads or memory?)"),
                )
            })?;
        }
        let s = &self.shared;
        let bytes = n as u64;
        let queued = s.queued_bytes.load(Ordering::SeqCst);
        if queued > 0 && queued + bytes > self.limit {
            s.count_dropped(&self.buf[..n]);
            self.buf.drain(..n);
            if !self.warned {
                self.warned = true;
                // Said only where it cannot block the caller: when stderr is the output that
                // stopped (the same terminal), the count at the end says it instead.
                if self.quiet {
                    return Ok(());
                }
                log::warn!(
                    "the output is not keeping up ({} MiB waiting): dropping whole lines of it \
                     until it does (counted at exit); every event still counts in the summary",
                    queued >> 20
                );
            }
            return Ok(());
        }
        // The gathered buffer itself goes, a recycled one takes its place (with the bytes
        // after the cut, if any: a flush hands over everything).
        let chunk = if n < CHUNK / 4 {
            // A small hand-over (a flush on a quiet host) gets a buffer of its own size: a
            // queue of them, each holding a whole gather buffer, grew to 35 GiB of address
            // space behind a stalled output before 16 MiB of bytes were queued.
            let small = self.buf[..n].to_vec();
            self.buf.drain(..n);
            Arc::new(small)
        } else {
            let mut next = s.buffer();
            next.extend_from_slice(&self.buf[n..]);
            self.buf.truncate(n);
            Arc::new(std::mem::replace(&mut self.buf, next))
        };
        s.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        s.queue().push_back(chunk);
        s.wake.notify_one();
        Ok(())
    }

    /// Hands over what is gathered, lets the thread write the queue, waiting at most the
    /// drain time; what it has not written by then counts as dropped (a line cut short by
    /// the end, its line end never written, among them), and the thread writes no more.
    fn finish(&mut self) {
        if self.failed().is_ok() && self.hand_over(self.buf.len()).is_err() {
            // No thread to write it: it never reaches the output.
            let s = Arc::clone(&self.shared);
            s.count_dropped(&self.buf);
        }
        let s = Arc::clone(&self.shared);
        {
            let _q = s.queue();
            s.closed.store(true, Ordering::SeqCst);
            s.wake.notify_one();
        }
        if Handle(Arc::clone(&s)).settle(self.drain) {
            return;
        }
        // The thread is stuck on the output; it ends with the process.
        let q = s.queue();
        s.abandoned.store(true, Ordering::SeqCst);
        let written = s.front_written.load(Ordering::SeqCst);
        for (i, chunk) in q.iter().enumerate() {
            s.count_dropped(&chunk[if i == 0 { written.min(chunk.len()) } else { 0 }..]);
        }
    }
}

impl io::Write for Detached {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.failed()?;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK
            && let Some(end) = self.buf.iter().rposition(|&b| b == b'\n')
        {
            self.hand_over(end + 1)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.failed()?;
        self.hand_over(self.buf.len())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Condvar, Mutex},
    };

    use super::*;

    /// An output that takes nothing until opened, then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate(Arc<GateState>);

    #[derive(Default)]
    struct GateState {
        /// Opened, and what was written.
        taken: Mutex<(bool, Vec<u8>)>,
        opened: Condvar,
    }

    impl Gate {
        fn open(&self) {
            self.0.taken.lock().expect("gate").0 = true;
            self.0.opened.notify_all();
        }
        fn written(&self) -> Vec<u8> {
            self.0.taken.lock().expect("gate").1.clone()
        }
    }

    impl io::Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let taken = self.0.taken.lock().expect("gate");
            let mut g = self.0.opened.wait_while(taken, |g| !g.0).expect("gate");
            g.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(from: usize, n: usize) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("line {i:06} {}\n", "x".repeat(40)).into_bytes())
            .collect()
    }

    #[test]
    fn an_output_that_keeps_up_gets_every_byte_in_order() {
        let gate = Gate::default();
        gate.open();
        // Room for all of it: however late the thread, nothing is dropped.
        let mut d = Detached::new(
            gate.clone(),
            "t",
            64 << 20,
            usize::MAX,
            Duration::from_secs(5),
        );
        let all = lines(0, 20_000);
        for piece in all.chunks(777) {
            d.write_all(piece).expect("test");
        }
        let dropped = d.handle();
        drop(d);
        assert_eq!(gate.written(), all);
        assert_eq!(dropped.dropped(), Dropped::default());
    }

    #[test]
    fn a_stalled_output_drops_whole_lines_and_counts_them_and_never_blocks_the_writer() {
        let gate = Gate::default();
        let limit = 256 << 10;
        let mut d = Detached::new(gate.clone(), "t", limit, PIPE_PIECE, Duration::from_secs(5));
        let all = lines(0, 50_000);
        // Written while the output takes nothing: the writer must not block.
        for piece in all.chunks(1000) {
            d.write_all(piece).expect("test");
        }
        d.flush().expect("test");
        let dropped = d.handle();
        let seen = dropped.dropped();
        assert!(seen.lines > 0, "nothing dropped with the output stalled");
        gate.open();
        drop(d);
        let written = gate.written();
        let total = line_ends(&all);
        // Every line is written whole or counted dropped, none split, none twice, in order.
        assert_eq!(line_ends(&written) + dropped.dropped().lines, total);
        assert_eq!(
            written.len() as u64 + dropped.dropped().bytes,
            all.len() as u64
        );
        let mut last = None;
        for l in written.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let l = std::str::from_utf8(l).expect("test");
            assert!(l.starts_with("line ") && l.len() == 52, "torn line {l:?}");
            let i: u32 = l[5..11].parse().expect("test");
            assert!(last.is_none_or(|p| i > p), "out of order at {i}");
            last = Some(i);
        }
        // What waited stayed within the limit (plus the one chunk in the thread's hands).
        assert!(
            written.len() <= limit + CHUNK + 1000,
            "{} written",
            written.len()
        );
    }

    /// An output that takes a few bytes per write (a slow terminal, a signal mid-write).
    struct Trickle(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(100);
            self.0.lock().expect("trickle").extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_with_unbounded_pieces_write_everything() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut d = Detached::new(
            Trickle(Arc::clone(&got)),
            "t",
            64 << 20,
            usize::MAX,
            Duration::from_secs(5),
        );
        let all = lines(0, 5_000);
        d.write_all(&all).expect("test");
        let handle = d.handle();
        drop(d);
        assert_eq!(*got.lock().expect("got"), all);
        assert_eq!(handle.dropped(), Dropped::default());
    }

    #[test]
    fn small_hand_overs_behind_a_stalled_output_hold_their_size_not_a_buffer_each() {
        let gate = Gate::default();
        let mut d = Detached::new(
            gate.clone(),
            "t",
            16 << 20,
            PIPE_PIECE,
            Duration::from_millis(50),
        );
        for i in 0..2_000 {
            d.write_all(&lines(i, 1)).expect("test");
            d.flush().expect("test");
        }
        let queued: usize = d.shared.queue().iter().map(|c| c.capacity()).sum();
        assert!(
            queued < 1 << 20,
            "{queued} bytes of buffers for 2,000 lines"
        );
        drop(d);
        gate.open();
    }

    #[test]
    fn an_output_that_never_takes_anything_counts_the_queue_as_dropped_at_the_end() {
        let gate = Gate::default();
        let mut d = Detached::new(
            gate.clone(),
            "t",
            1 << 20,
            usize::MAX,
            Duration::from_millis(50),
        );
        d.write_all(&lines(0, 10)).expect("test");
        let dropped = d.handle();
        drop(d);
        assert_eq!(dropped.dropped().lines, 10);
        gate.open();
    }

    #[test]
    fn a_write_error_comes_back_from_the_next_call() {
        struct Closed;
        impl io::Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Detached::new(Closed, "t", 1 << 20, usize::MAX, Duration::from_secs(1));
        d.write_all(b"a\n").expect("test");
        d.flush().expect("test");
        let until = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match d.write_all(b"b\n").and_then(|()| d.flush()) {
                Err(e) => break e,
                Ok(()) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
                Ok(()) => panic!("no error within 5 s"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
