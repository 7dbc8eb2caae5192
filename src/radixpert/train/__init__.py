"""Training: recipes (a run's model and stages as validated YAML data)."""
