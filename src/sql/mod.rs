//! SQL text: quoting (`ident`), object names (`names`) and the pure generators (`gen`).

pub mod gen;
pub mod ident;
pub mod names;
