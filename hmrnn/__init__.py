"""hmrnn: Hierarchical Multiscale Recurrent Neural Networks in PyTorch."""
