"""Reward sources, in one package:

- `rm`: reward models (one or several, combined by `combine`'s rules) as a scorer;
- `combine`: how several RMs' scores become one reward (pure torch: the Llama 2 rule);
- `rules`: rule rewards (the world's gold judges, length, counts) and their prompt checks;
- `build`: the scorer a command's config asks for (`--rm` / `--combine` / `--rule-reward`);
- `command`: `rlhfkit score`;
- `remote`: reward models behind a URL (`--rm NAME=URL`), `rlhfkit serve-rm` or vLLM;
- `serve` and `batcher`: `rlhfkit serve-rm`, one reward model over HTTP, dynamic batching;
- `tokens`: the policy's sampled tokens as a reward model reads them.

A scorer is anything with `score(prompts, responses, safety) -> (B,) tensor` (or a result
with `.scores`), and optionally `score_tokens(...)` on the policy's token ids.
"""
