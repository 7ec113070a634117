"""fANOVA, variant statistics and the Plotly report of lstm-odyssey (never imports torch)."""
