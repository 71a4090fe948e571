"""Replay a folder of images as a live stream (see simulator.py, dataset.py)."""
