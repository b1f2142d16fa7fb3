//! Where the pipeline's output goes: the [`Sink`] trait every consumer of events and facts
//! implements (the line stream, the recorder, the chart timeline, the dashboard's recent
//! closes; socket-table samples reach them too), and [`Shared`], which lets the pipeline own a sink while its creator keeps a
//! handle to read it afterwards. Nothing here knows about the kernel.

use std::{cell::RefCell, io, rc::Rc};

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
