"""chinwag.align: reward models, DPO family, PPO, REINFORCE/RLOO/GRPO, composite rewards, constitutional."""
