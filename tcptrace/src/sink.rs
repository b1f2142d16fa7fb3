//! Where the pipeline's output goes: the [`Sink`] trait every consumer of events and facts
//! implements (the line stream, the recorder, the chart timeline, the dashboard's recent
//! closes; socket-table samples reach them too), and [`Shared`], which lets the pipeline own a sink while its creator keeps a
//! handle to read it afterwards. Nothing here knows about the kernel.
//!
//! A panic in a sink is a bug, but it must not take the run down with it before the summary
//! and the recording are written: [`guarded`] turns it into that sink's error (the pipeline
//! then skips the sink and the live loop stops, exit code 101). [`PanicAfter`] is the test
//! hook that proves it (the hidden flag `--test-panic-after-events N`).

use std::{cell::RefCell, fmt, io, rc::Rc};

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
}
