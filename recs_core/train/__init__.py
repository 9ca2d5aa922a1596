"""The incremental job: one test-then-train pass over a window of logs."""
