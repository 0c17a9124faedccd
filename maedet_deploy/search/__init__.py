"""Zero-shot search: the entropy score, the space, budgets and the evolution."""
