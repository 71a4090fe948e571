"""Faust tables: live label counts (see label_counts.py)."""
