"""`rlhfkit rs`, rejection sampling fine-tuning (Llama 2): `loop` (train_rs: the command,
rounds of sample, keep, fine-tune), `rounds` (RSRun: one round, and the state between
rounds), `samples` (K scored samples per prompt, resumable), `keep` (which samples become
training data, and each round's statistics)."""
