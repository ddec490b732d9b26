"""Character-level language modelling (section 4.1): the model a config describes, and the
task that trains, evaluates, samples and traces it."""
