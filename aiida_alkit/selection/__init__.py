"""Batch selection: MaxDiag, MaxDet, MaxDist, LCMD, MaxVol and threshold windows. No AiiDA import."""
