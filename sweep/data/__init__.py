"""Datasets behind one interface (splits of padded batches, per-step loss, metrics) and their loaders."""
