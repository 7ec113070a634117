"""Sweeps of recurrent networks: the torch-free core (`sweep.core`), cells and models (`sweep.nn`), datasets
(`sweep.data`), training, study specs, studies, workers, objectives, the local runner, and the `odyssey`
command line (`sweep.cli`)."""
