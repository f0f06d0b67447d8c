//! Shoal benchmarks live in benches/benches.
