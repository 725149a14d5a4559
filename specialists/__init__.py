"""Specialist stage: covariance K-means groups, dustbin specialists and Eq. 5 combined inference."""
