//! The conformance kit: the crate's contract as scenarios a backend can run (placeholder).
