"""What CalcJobs execute remotely: ``python -m aiida_alkit.jobs.<name> <input dir>`` (plain files in and out, no AiiDA import)."""
