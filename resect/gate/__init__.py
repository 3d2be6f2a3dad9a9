"""Evaluation and the gate: lm-eval runs (evaluate, tasks), toxicity measurement (toxicity, scoring),
the verdict (verify) and its one report model with a renderer per medium (report)."""
