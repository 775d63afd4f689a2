//! pgtwin: two-way sync of tables between two PostgreSQL servers, built from postgres_fdw and
//! statement-level triggers. See README.md for how it works.

pub mod apply;
pub mod catalog;
pub mod change;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod db;
pub mod init;
pub mod install;
pub mod libpq;
pub mod localpg;
pub mod locks;
pub mod metrics;
pub mod plan;
pub mod problems;
pub mod progress;
pub mod runner;
pub mod soak;
pub mod sql;
pub mod state;
pub mod status;
pub mod tls;
pub mod twin;
