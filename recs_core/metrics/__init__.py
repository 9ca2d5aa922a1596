"""Quality metrics: exact AUC, logloss, and progressive (test-then-train) accumulation."""
