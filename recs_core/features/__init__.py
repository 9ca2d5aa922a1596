"""Feature processing: stable hashing, JIT operators, the feature spec and its operator graph."""
