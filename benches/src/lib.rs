//! Storemesh's benchmarks live in `benches/` of this crate; run them with
//! `cargo bench -p storemesh-benches`. Each benchmark group measures a baseline in the same
//! run (these machines are shared and noisy, so ratios are what we track).
