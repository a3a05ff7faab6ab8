//! What runs while the service runs, between the handlers and the wiring:
//! the consumer loop that pulls deliveries, hands each to its handler and
//! settles it ([`consumer`], with [`settle`] sending acknowledgements in
//! bursts), the watch that keeps each durable consumer declared
//! ([`consumer_watch`]), and the probes and metrics over HTTP ([`http`]).
//! `app` starts them; nothing here knows the command line.

pub mod consumer;
pub mod consumer_watch;
pub mod http;
pub mod settle;
