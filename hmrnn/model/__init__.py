"""The model library: the HM-LSTM (cell, stack, time loop), the gated output module, the
baselines, and inference that skips COPY. Imports nothing above itself."""
