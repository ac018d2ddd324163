"""Data for training, evaluation and demos: procedural CT phantoms and datasets."""
