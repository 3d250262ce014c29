//! The actor's destinations: adding and removing them, and starting and tearing down each
//! one's push pipeline, fed from the program's FLV fan-out.
//!
//! Owns the push pipelines ([`RunningOutput`]) and carries out what
//! [`Destinations`](crate::relay::destinations::Destinations) decides. It must not judge a
//! destination's health itself, and never blocks on a push pipeline: a stuck one is
//! abandoned on a thread of its own.

use std::collections::BTreeMap;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use super::{abandon, forward_bus, Actor, Event};
use crate::pipeline as pl;
use crate::pipeline::bus::ProgramEvent;
use crate::pipeline::output::{self, OutputPipeline};
use crate::relay::destinations::Action;
use crate::relay::handle::RelayError;
use crate::relay::spec::OutputSpec;
use crate::relay::state::OutputEvent;

/// A destination's push pipeline.
pub(super) struct RunningOutput {
    pub(super) pipeline: OutputPipeline,
    generation: u64,
    bus_task: JoinHandle<()>,
}

impl Actor {
    /// Adds a destination; while the program runs it goes live at once, and nothing else is
    /// touched.
    pub(super) fn add_output(&mut self, spec: OutputSpec) -> Result<(), RelayError> {
        let id = self.spec.id.clone();
        let invalid = |field: String, message: String| RelayError::Invalid {
            id: id.clone(),
            field,
            message,
        };
        spec.validate("").map_err(|e| invalid(e.field, e.message))?;
        if self.outputs.contains(&spec.id) {
            return Err(RelayError::OutputExists {
                id: id.clone(),
                output: spec.id.clone(),
            });
        }
        let mut next = self.spec.clone();
        next.outputs.push(spec.clone());
        next.validate()
            .and_then(|_| next.check_fits(self.ctx.program.width, self.ctx.program.height))
            .map_err(|e| invalid(e.field, e.message))?;
        let top = self.renditions()?.remove(0);
        let encode = self.output_encode(&spec, &top);
        if let Some(running) = &mut self.program {
            running
                .program
                .add_destination(&spec.id, encode)
                .map_err(|source| RelayError::Pipeline {
                    id: id.clone(),
                    source,
                })?;
        }
        info!(relay = %id, output = %spec.id, "destination added");
        self.spec = next;
        self.outputs.insert(spec.clone());
        self.start_output(&spec.id);
        Ok(())
    }

    /// Removes a destination: its push pipeline ends, and its encoder if no one else uses it.
    pub(super) fn remove_output(&mut self, output_id: &str) -> Result<(), RelayError> {
        if !self.outputs.contains(output_id) {
            return Err(RelayError::NoSuchOutput {
                id: self.spec.id.clone(),
                output: output_id.to_owned(),
            });
        }
        self.stop_output(output_id, OutputEvent::Stopped, "removed by operator");
        if let Some(running) = &mut self.program {
            running.program.remove_destination(output_id);
        }
        self.outputs.remove(output_id);
        self.spec.outputs.retain(|o| o.id != output_id);
        info!(relay = %self.spec.id, output = %output_id, "destination removed");
        Ok(())
    }

    /// Starts one destination's push pipeline, attached to the program's feed.
    pub(super) fn start_output(&mut self, output_id: &str) {
        let Some(program) = &self.program else { return };
        let Some(feed) = program.program.feed(output_id) else {
            return;
        };
        let Some(out) = self.outputs.get(output_id) else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let relay_id = self.spec.id.clone();
        let events = self.events_tx.clone();
        let built = output::build(&relay_id, output_id, &out.spec.url).and_then(|p| {
            let id = output_id.to_owned();
            let bus_task = forward_bus(&p.pipeline, events, move |event| Event::OutputBus {
                output: id.clone(),
                generation,
                event,
            });
            match pl::set_state(&p.pipeline, gst::State::Playing) {
                Ok(_) => Ok((p, bus_task)),
                Err(e) => {
                    bus_task.abort();
                    abandon(p.pipeline, format!("relay {relay_id} output {output_id}"));
                    Err(e)
                }
            }
        });
        let now = Instant::now();
        match built {
            Ok((pipeline, bus_task)) => {
                feed.attach(pipeline.feed.clone(), pipeline.demuxes());
                self.pushes.insert(
                    output_id.to_owned(),
                    RunningOutput {
                        pipeline,
                        generation,
                        bus_task,
                    },
                );
                self.outputs.started(output_id, now);
            }
            Err(e) => self.outputs.start_failed(output_id, &e.to_string(), now),
        }
    }

    /// Tears down a destination's push pipeline (if it has one), and moves it on by `event`.
    pub(super) fn stop_output(&mut self, output_id: &str, event: OutputEvent, why: &str) {
        if let Some(feed) = self
            .program
            .as_ref()
            .and_then(|p| p.program.feed(output_id))
        {
            feed.detach();
        }
        let bytes_sent = self.pushes.remove(output_id).map(|running| {
            running.bus_task.abort();
            let bytes = running.pipeline.bytes_sent();
            abandon(
                running.pipeline.pipeline,
                format!("relay {} output {output_id}", self.spec.id),
            );
            bytes
        });
        self.outputs
            .ended(output_id, event, bytes_sent, why, Instant::now());
    }

    /// What a push pipeline's bus reported (events from an older session are ignored).
    pub(super) fn on_output_event(&mut self, output: &str, generation: u64, event: &ProgramEvent) {
        if self.pushes.get(output).map(|r| r.generation) != Some(generation) {
            return;
        }
        if let ProgramEvent::Error { error, .. } = event {
            let reason = error.to_string();
            self.stop_output(output, OutputEvent::Failed(reason.clone()), &reason);
        }
    }

    /// Reads every push session's byte counter and carries out what the destinations' rules
    /// make of them: stalled sessions are torn down, due retries started.
    pub(super) fn tick_outputs(&mut self, now: Instant) {
        let bytes: BTreeMap<String, u64> = self
            .pushes
            .iter()
            .map(|(id, running)| (id.clone(), running.pipeline.bytes_sent()))
            .collect();
        for action in self.outputs.tick(now, self.program.is_some(), &bytes) {
            match action {
                Action::Fail { output, reason } => {
                    self.stop_output(&output, OutputEvent::Failed(reason.clone()), &reason)
                }
                Action::Start { output } => self.start_output(&output),
            }
        }
    }
}
