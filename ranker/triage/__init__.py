"""Renewal-risk triage: churn patterns mined from past renewals, accounts flagged before their renewal, the
next best action ranked by a loop, a draft email, and a person's decision."""
