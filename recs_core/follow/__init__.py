"""recs follow: the chain of windows (watch, train, retry, gate, publish) and its report."""
