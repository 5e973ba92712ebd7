"""Hostile inputs for the decoder, the Classifier and the CLI, generated at test time (see make.py)."""
