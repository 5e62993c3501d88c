"""Reports of runs and data: the HTML/Markdown comparison, plots, recommendations, data inspection."""
