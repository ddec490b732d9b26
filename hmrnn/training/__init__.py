"""Training that knows no particular corpus or model: config, trainer, checkpoints,
distributed runs, metrics. A task plugs in through :class:`hmrnn.training.task.Task`."""
