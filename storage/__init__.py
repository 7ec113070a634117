"""Storage URLs, engines, the Optuna storage and the results database of lstm-odyssey."""
