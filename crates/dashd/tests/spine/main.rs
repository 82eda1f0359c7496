//! The spine's integration tests: the real `dashd` binary, real SQLite, on port 0.

mod boards;
mod chromium;
mod cli;
mod cluster;
mod dashboard;
mod disk;
mod durability;
mod edge_trust;
mod export;
mod flush;
mod fuzz;
mod hostile;
mod image;
mod intake;
mod jobs;
mod live;
mod monitoring;
mod operator;
mod providers;
mod retention;
mod roles;
mod support;
mod timescale;
mod verify;
mod views;
