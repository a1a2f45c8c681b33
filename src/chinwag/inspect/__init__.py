"""chinwag.inspect: plots and run inspection."""
