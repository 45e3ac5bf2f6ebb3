"""AiiDA work chains: labelling, the active-learning campaign, protocols."""
