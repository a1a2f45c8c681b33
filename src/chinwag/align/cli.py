"""`chinwag align ...`: preference training (rm, dpo, constitutional) and RL (ppo, grpo, rloo, reinforce),
plus `demo TASK --algo ALGO`, the verifiable tasks that prove each algorithm works."""

import typer

from chinwag.align import cli_pref, cli_rl

app = typer.Typer(no_args_is_help=True)
cli_pref.register(app)  # rm, dpo, constitutional
cli_rl.register(app)  # ppo, grpo, rloo, reinforce, demo
