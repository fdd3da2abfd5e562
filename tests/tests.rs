//! Integration tests, compiled as one binary: a module per area, each driving the real CLI or the
//! library on real inputs in temporary folders.

#![allow(clippy::print_stdout, reason = "benchmarks and tests report on stdout")]

mod audit;
mod common;
mod deploy;
mod emit;
mod faults;
mod fuzz;
mod labelstudio;
mod rebuild;
mod redact;
mod run;
mod run_s3;
mod schemas;
mod select;
mod stages;
mod storage;
mod trust;
mod trust_out;
mod vision;
