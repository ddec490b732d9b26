"""Analysis of what a model learned: boundary scores against the truth, figures, and the
HTML report. Knows boundaries and text, not models, tasks or training."""
