"""Recurrent cells (Greff et al.'s LSTM variants, GRU), their kernels, and the sequence models on them."""
