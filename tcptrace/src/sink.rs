//! Where the pipeline's output goes: the [`Sink`] trait every consumer of events and facts
//! implements (the line stream, the recorder, the chart timeline, the dashboard's recent
//! closes), and [`Shared`], which lets the pipeline own a sink while its creator keeps a
//! handle to read it afterwards. Nothing here knows about the kernel.

use std::{cell::RefCell, io, rc::Rc};

use crate::{decode::Event, track::Fact};

/// Where facts go after the tracker.
pub trait Sink {
    /// Called for every decoded event, in time order, before its facts.
    fn event(&mut self, _event: &Event) -> io::Result<()> {
        Ok(())
    }
    /// Called for every fact, in time order.
    fn fact(&mut self, fact: &Fact) -> io::Result<()>;
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
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}
