"""Parsers of the alkit CalcJobs."""
