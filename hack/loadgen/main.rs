//! Placeholder while the load generator is written.

fn main() {}
