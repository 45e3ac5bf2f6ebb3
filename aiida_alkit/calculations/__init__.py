"""AiiDA CalcJobs (train, explore, ASE label) and calcfunctions."""
