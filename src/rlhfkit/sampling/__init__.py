"""How responses are drawn from a policy: the generator seam (our decoding path, HF, vLLM)
and sample-and-score, shared by every stage that samples."""
