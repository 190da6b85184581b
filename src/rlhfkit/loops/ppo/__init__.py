"""`rlhfkit ppo`, in the order of one iteration: `loop` (train_ppo: the iteration on one
screen), `rollout` (sample, score, reference log-probs, per-token rewards), `update`
(values, advantages and returns, clipped policy and value steps, PPO-ptx), `metrics`
(what a step logs), `roles` (policy, reference, value model from a config), and `run`
(the `PPORun` an iteration needs: built from the roles, saved, resumed, evaluated)."""
