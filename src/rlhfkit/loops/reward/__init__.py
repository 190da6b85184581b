"""`rlhfkit rm` and `rlhfkit rm eval`: `train` (train_rm: K-wise ranking / margin losses)
and `eval` (loss and pairwise accuracy, overall and per preference strength)."""
