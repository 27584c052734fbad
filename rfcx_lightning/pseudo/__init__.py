"""Pseudo labels: the pool of teacher predictions and the targets it serves to the round stages."""
