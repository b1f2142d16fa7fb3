//! Where the pipeline's output goes: the [`Sink`] trait every consumer of events and facts
//! implements (the line stream, the recorder, the chart timeline, the dashboard's recent
//! closes; socket-table samples reach them too), and [`Shared`], which lets the pipeline own a sink while its creator keeps a
//! handle to read it afterwards. Nothing here knows about the kernel.
//!
//! A panic in a sink is a bug, but it must not take the run down with it before the summary
//! and the recording are written: [`guarded`] turns it into that sink's error (the pipeline
//! then skips the sink and the live loop stops, exit code 101). [`PanicAfter`] is the test
//! hook that proves it (the hidden flag `--test-panic-after-events N`). [`Watched`] tells
//! a sink's creator that the sink failed (an error, or a panic partway through a call), so
//! `record` does not put an end record after a record the recorder may have torn.

use std::{
    cell::{Cell, RefCell},
    fmt, io,
    rc::Rc,
};

use crate::{decode::Event, listeners::Sample, track::Fact};

/// Where facts go after the tracker.
pub trait Sink {
    /// Called for every decoded event, in time order, before its facts.
    fn event(&mut self, _event: &Event) -> io::Result<()> {
        Ok(())
    }
    /// Called for every fact, in time order.
    fn fact(&mut self, fact: &Fact) -> io::Result<()>;
    /// Called for every socket-table sample (one network namespace at one instant), in the
    /// order the pipeline takes them in.
    fn sample(&mut self, _sample: &Sample) -> io::Result<()> {
        Ok(())
    }
    /// Called when the input has gone quiet and at exit.
    fn flush(&mut self) -> io::Result<()>;
}

/// A sink the pipeline owns while the caller keeps a handle to read it afterwards.
pub struct Shared<T>(pub Rc<RefCell<T>>);

impl<T: Sink> Sink for Shared<T> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.0.borrow_mut().event(ev)
    }
    fn fact(&mut self, fact: &Fact) -> io::Result<()> {
        self.0.borrow_mut().fact(fact)
    }
    fn sample(&mut self, sample: &Sample) -> io::Result<()> {
        self.0.borrow_mut().sample(sample)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// A sink that tells its creator whether it failed: a call returned an error, or panicked
/// partway (the pipeline's [`guarded`] catches the panic outside this wrapper, so the flag
/// set before the call stays set). The pipeline calls a failed sink no more.
pub struct Watched<S> {
    inner: S,
    failed: Rc<Cell<bool>>,
}

impl<S: Sink> Watched<S> {
    /// Wraps `inner`; `failed` turns true when it fails.
    pub fn new(inner: S, failed: Rc<Cell<bool>>) -> Self {
        Self { inner, failed }
    }

    fn call(&mut self, f: impl FnOnce(&mut S) -> io::Result<()>) -> io::Result<()> {
        self.failed.set(true);
        let result = f(&mut self.inner);
        self.failed.set(result.is_err());
        result
    }
}

impl<S: Sink> Sink for Watched<S> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.call(|s| s.event(ev))
    }
    fn fact(&mut self, fact: &Fact) -> io::Result<()> {
        self.call(|s| s.fact(fact))
    }
    fn sample(&mut self, sample: &Sample) -> io::Result<()> {
        self.call(|s| s.sample(sample))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.call(Sink::flush)
    }
}

/// The error a panicking sink leaves: its panic message.
#[derive(Debug)]
struct SinkPanicked(String);

impl fmt::Display for SinkPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "internal error: an output panicked: {}", self.0)
    }
}

impl std::error::Error for SinkPanicked {}

/// The error for a sink that panicked with `message`.
pub fn panic_error(message: &str) -> io::Error {
    io::Error::other(SinkPanicked(message.to_owned()))
}

/// True for the error of a sink that panicked (see [`guarded`]).
pub fn is_panic(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SinkPanicked>())
}

/// Runs one call into a sink; a panic becomes that sink's error. The panic hook has already
/// printed the message (and `top`'s hook restored the terminal) by the time it returns.
#[inline]
pub fn guarded(call: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    // AssertUnwindSafe: after a panic the sink is never called again (the pipeline skips a
    // failed sink), and its creator only reads it to flush what it can.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Err(panic_error(&message))
        }
    }
}

/// Test hook: a sink that panics on its `n`th event, as a buggy sink would (the hidden flag
/// `--test-panic-after-events N` adds it to a live run).
pub struct PanicAfter {
    left: u64,
}

impl PanicAfter {
    pub fn new(n: u64) -> Self {
        Self { left: n.max(1) }
    }
}

impl Sink for PanicAfter {
    fn event(&mut self, _event: &Event) -> io::Result<()> {
        self.left -= 1;
        assert!(
            self.left > 0,
            "test hook --test-panic-after-events: a sink panics as asked"
        );
        Ok(())
    }
    fn fact(&mut self, _fact: &Fact) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_sinks_error_and_other_errors_pass_through() {
        // The panic hook would print the expected panic; keep the test output clean.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e = guarded(|| panic!("boom {}", 7)).expect_err("a panic is an error");
        let s = guarded(|| panic!("static")).expect_err("a panic is an error");
        std::panic::set_hook(hook);
        assert!(is_panic(&e) && is_panic(&s));
        assert!(e.to_string().contains("boom 7"), "{e}");
        assert!(s.to_string().contains("static"), "{s}");
        let pipe = guarded(|| Err(io::ErrorKind::BrokenPipe.into())).expect_err("passes through");
        assert_eq!(pipe.kind(), io::ErrorKind::BrokenPipe);
        assert!(!is_panic(&pipe));
        assert!(guarded(|| Ok(())).is_ok());
    }

    /// A sink that fails its `n`th flush in the way asked.
    struct FailOn {
        flushes: u64,
        panic: bool,
    }

    impl Sink for FailOn {
        fn fact(&mut self, _fact: &Fact) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes -= 1;
            if self.flushes > 0 {
                return Ok(());
            }
            assert!(!self.panic, "torn partway");
            Err(io::ErrorKind::StorageFull.into())
        }
    }

    #[test]
    fn watched_says_a_sink_failed_by_error_or_by_panic_and_not_before() {
        for panic in [false, true] {
            let failed = Rc::new(Cell::new(false));
            let mut sink = Watched::new(FailOn { flushes: 2, panic }, Rc::clone(&failed));
            assert!(guarded(|| sink.flush()).is_ok());
            assert!(!failed.get(), "a call that went well is no failure");
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let e = guarded(|| sink.flush()).expect_err("the second flush fails");
            std::panic::set_hook(hook);
            assert_eq!(is_panic(&e), panic);
            assert!(failed.get(), "panic {panic}: the failure was not seen");
        }
    }
}
