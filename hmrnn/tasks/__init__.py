"""The paper's experiments as tasks: each builds its models from its config, reads its data
and implements the trainer's task interface (character LM; handwriting)."""
