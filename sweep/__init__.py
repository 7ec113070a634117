"""Cells, models, datasets, training, study specs, workers and the `odyssey` command line."""
