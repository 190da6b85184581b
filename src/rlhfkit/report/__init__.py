"""`rlhfkit report`: the run's report.md and its plots (`render`), the papers beside the run
(`papers`), the plots (`plots`) and the over-optimisation fits of Gao et al. (`gao`)."""
