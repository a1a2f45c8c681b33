"""chinwag.align: reward models, DPO family, PPO and REINFORCE/RLOO/GRPO, composite rewards, constitutional."""
