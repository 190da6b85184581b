"""`rlhfkit rs`, rejection sampling fine-tuning (Llama 2): `loop` (train_rs: rounds of
sample, keep, fine-tune), `samples` (K scored samples per prompt, resumable), `keep`
(which samples become training data, and each round's statistics)."""
