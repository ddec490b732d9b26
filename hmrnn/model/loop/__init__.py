"""The HM-LSTM stack's fast time loop (private to :mod:`hmrnn.model`): buffers, the forward
and backward loops, and one module per step backend (ATen; C on the CPU)."""
